"""Runs tritonclient.grpc's model repository calls against a gateway; prints JSON.

A separate process for the reason given in triton_client.py. Usage:
python triton_repository.py ADDRESS MODEL INPUT WIDTH
Unloads MODEL, waits (at most 10 s) for is_model_ready to turn false, tries an inference and
reads the repository index, loads it again, and tries the calls that must be refused.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import tritonclient.grpc as tc


def status_of(call: Any) -> dict[str, str]:
    try:
        call()
    except tc.InferenceServerException as exc:
        return {"status": str(exc.status()), "message": str(exc.message())}
    return {"status": "OK", "message": ""}


def main() -> None:
    address, model, input_name, width = sys.argv[1:5]
    client = tc.InferenceServerClient(address)
    x = tc.InferInput(input_name, [1, int(width)], "FP32")
    x.set_data_from_numpy(np.ones((1, int(width)), np.float32))
    out: dict[str, Any] = {
        "extensions": list(client.get_server_metadata().extensions),
        "ready_before": client.is_model_ready(model),
    }
    client.unload_model(model)
    started = time.monotonic()
    while client.is_model_ready(model) and time.monotonic() - started < 10:
        time.sleep(0.05)
    out["unready_after_s"] = time.monotonic() - started
    out["ready_after_unload"] = client.is_model_ready(model)
    out["infer_unloaded"] = status_of(lambda: client.infer(model, [x]))
    index = client.get_model_repository_index(as_json=True)
    out["index_unloaded"] = [m for m in index.get("models", []) if m["name"] == model]
    started = time.monotonic()
    client.load_model(model)
    out["load_s"] = time.monotonic() - started
    out["ready_after_load"] = client.is_model_ready(model)
    out["infer_loaded"] = status_of(lambda: client.infer(model, [x]))
    out["load_unknown"] = status_of(lambda: client.load_model("no_such_model"))
    out["unload_unknown"] = status_of(lambda: client.unload_model("no_such_model"))
    out["load_config"] = status_of(lambda: client.load_model(model, config="{}"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
