"""tritonclient.grpc over TLS (``ssl=True, root_certificates=CA``) against a gateway; prints
what it saw as JSON. A separate process, as the other tritonclient scripts (its protobuf
package ``inference`` must not share a descriptor pool with modelserve's generated code).
Usage: python triton_tls.py ADDRESS CA_FILE|plain
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as tc


def main() -> None:
    address, ca = sys.argv[1:3]
    if ca == "plain":
        client = tc.InferenceServerClient(address)
    else:
        client = tc.InferenceServerClient(address, ssl=True, root_certificates=ca)
    out: dict[str, object] = {}
    try:
        out["ready"] = client.is_server_ready(client_timeout=10)
        x = tc.InferInput("transaction", [2, 8], "FP32")
        x.set_data_from_numpy(np.full((2, 8), 0.25, np.float32))
        result = client.infer("fraud", [x], client_timeout=10)
        out["output"] = result.as_numpy("fraud_probability").tolist()
        out["model"] = client.get_model_metadata("fraud").name
    except tc.InferenceServerException as exc:
        out["error"] = exc.status()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
