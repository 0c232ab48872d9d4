"""Asks a lookup model for keys through tritonclient.grpc and prints each answer as a JSON line.

A separate process for the reason triton_client.py gives (tritonclient's protobuf package
``inference`` must not share a descriptor pool with modelserve's generated code).
Usage: python batch_lookup_reader.py ADDRESS MODEL KEYS_JSON [STOP_FILE]
One answer, or, with STOP_FILE, answers back to back until that file exists.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tritonclient.grpc as tc


def ask(client: tc.InferenceServerClient, model: str, keys: np.ndarray) -> dict[str, list]:  # type: ignore[type-arg]
    x = tc.InferInput("id", [len(keys), 1], "INT64")
    x.set_data_from_numpy(keys.reshape(-1, 1))
    answer = client.infer(model, [x])
    return {n: answer.as_numpy(n).tolist() for n in ("score", "vec", "lookup_status")}


def main() -> None:
    address, model, keys_json = sys.argv[1:4]
    stop = sys.argv[4] if len(sys.argv) > 4 else ""
    client = tc.InferenceServerClient(address)
    keys = np.asarray(json.loads(keys_json), dtype=np.int64)
    while True:
        print(json.dumps(ask(client, model, keys)), flush=True)
        if not stop or os.path.exists(stop):
            return


if __name__ == "__main__":
    main()
