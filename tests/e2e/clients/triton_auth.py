"""tritonclient.grpc against a gateway with auth on: infer with ``headers=`` and without.

A separate process (tritonclient's protobuf package must not meet modelserve's).
Usage: python triton_auth.py ADDRESS TOKEN
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as tc


def main() -> None:
    address, token = sys.argv[1:3]
    client = tc.InferenceServerClient(address)
    x = tc.InferInput("transaction", [1, 8], "FP32")
    x.set_data_from_numpy(np.ones((1, 8), np.float32))
    headers = {"authorization": f"Bearer {token}"}
    result = client.infer("fraud", [x], headers=headers)
    out: dict[str, object] = {
        "output": result.as_numpy("fraud_probability").tolist(),
        "model_ready": client.is_model_ready("fraud", headers=headers),
    }
    try:
        client.infer("fraud", [x])
    except tc.InferenceServerException as exc:
        out["no_token_status"] = exc.status()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
