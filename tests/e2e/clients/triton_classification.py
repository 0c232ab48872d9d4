"""Runs tritonclient.grpc classification requests against a gateway; prints JSON.

A separate process for the reason given in triton_client.py (tritonclient's own ``inference``
protobuf package). Usage: python triton_classification.py ADDRESS MODEL INPUT ROWS_JSON OUTPUT K
Prints {"classes": [[...]], "bad_count": {"status": ..., "message": ...}}.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as tc


def main() -> None:
    address, model, input_name, rows, output_name, k = sys.argv[1:7]
    client = tc.InferenceServerClient(address)
    data = np.asarray(json.loads(rows), dtype=np.float32)
    x = tc.InferInput(input_name, list(data.shape), "FP32")
    x.set_data_from_numpy(data)
    result = client.infer(
        model, [x], outputs=[tc.InferRequestedOutput(output_name, class_count=int(k))]
    )
    classes = result.as_numpy(output_name)
    out: dict[str, object] = {
        "classes": [[v.decode() for v in row] for row in classes.tolist()],
        "datatype": result.get_output(output_name).datatype,
    }
    bad = tc.InferRequestedOutput(output_name, class_count=1)
    bad._output.parameters["classification"].int64_param = 0
    try:
        client.infer(model, [x], outputs=[bad])
    except tc.InferenceServerException as exc:
        out["bad_count"] = {"status": exc.status(), "message": exc.message()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
