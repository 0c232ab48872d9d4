"""Runs tritonclient.grpc against a gateway and prints what it saw as JSON.

A separate process on purpose: tritonclient registers its own protobuf package ``inference``
and must not share a descriptor pool with modelserve's generated code.
Usage: python triton_client.py ADDRESS MODEL INPUT_NAME ROWS_JSON OUTPUT_NAME
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as tc
from google.protobuf.json_format import MessageToDict


def main() -> None:
    address, model, input_name, rows, output_name = sys.argv[1:6]
    client = tc.InferenceServerClient(address)
    data = np.asarray(json.loads(rows), dtype=np.float32)
    x = tc.InferInput(input_name, list(data.shape), "FP32")
    x.set_data_from_numpy(data)
    result = client.infer(model, [x], outputs=[tc.InferRequestedOutput(output_name)])
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": MessageToDict(client.get_server_metadata()),
        "model_metadata": MessageToDict(client.get_model_metadata(model)),
        "model_config": MessageToDict(client.get_model_config(model)),
        "output": result.as_numpy(output_name).tolist(),
        "response": MessageToDict(result.get_response()),
        "statistics": MessageToDict(client.get_inference_statistics(model)),
        "index": MessageToDict(client.get_model_repository_index()),
    }
    try:
        client.get_model_metadata("no-such-model")
    except tc.InferenceServerException as exc:
        out["unknown_model_status"] = exc.status()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
