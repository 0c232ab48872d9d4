"""Runs tritonclient.http and tritonclient.grpc against one gateway; prints both answers as JSON.

A separate process for the reason given in triton_client.py (tritonclient's own ``inference``
protobuf package). Each key holds {"http": ..., "grpc": ...} so the test can insist the two
faces answer alike. Usage: python triton_http_client.py GRPC_ADDRESS HTTP_ADDRESS ROWS_JSON
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf.json_format import MessageToDict

DTYPES = ("FP32", "FP16", "INT32", "INT64", "BOOL", "BYTES")
NUMPY = {
    "FP32": np.float32,
    "FP16": np.float16,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}


def _dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _error(call: Any) -> dict[str, str]:
    try:
        call()
    except (th.InferenceServerException, tg.InferenceServerException) as exc:
        return {"status": str(exc.status()), "message": str(exc.message())}
    return {"status": "no error"}


def _dtype_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    words = np.array([["a", "bé", "", "long word"], ["x", "y", "z", "ünï"]], dtype=object)
    return {
        "FP32": rng.standard_normal((2, 4)).astype(np.float32),
        "FP16": rng.standard_normal((2, 4)).astype(np.float16),
        "INT32": rng.integers(-1000, 1000, (2, 4)).astype(np.int32),
        "INT64": rng.integers(-(2**40), 2**40, (2, 4)).astype(np.int64),
        "BOOL": rng.integers(0, 2, (2, 4)).astype(np.bool_),
        "BYTES": np.vectorize(lambda s: s.encode(), otypes=[object])(words),
    }


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _plain(arr: np.ndarray) -> list[Any]:
    if arr.dtype == object:
        return [[v.decode() if isinstance(v, bytes) else v for v in row] for row in arr.tolist()]
    return [[float(v) if arr.dtype.kind == "f" else v for v in row] for row in arr.tolist()]


def main() -> None:
    grpc_address, http_address, rows_json = sys.argv[1:4]
    h = th.InferenceServerClient(http_address)
    g = tg.InferenceServerClient(grpc_address)
    rows = np.asarray(json.loads(rows_json), dtype=np.float32)
    out: dict[str, Any] = {
        "live": {"http": h.is_server_live(), "grpc": g.is_server_live()},
        "ready": {"http": h.is_server_ready(), "grpc": g.is_server_ready()},
        "model_ready": {"http": h.is_model_ready("fraud"), "grpc": g.is_model_ready("fraud")},
        "model_ready_v2": {
            "http": h.is_model_ready("fraud", "2"),
            "grpc": g.is_model_ready("fraud", "2"),
        },
        "server_metadata": {
            "http": h.get_server_metadata(),
            "grpc": _dict(g.get_server_metadata()),
        },
        "model_metadata": {
            "http": h.get_model_metadata("fraud"),
            "grpc": _dict(g.get_model_metadata("fraud")),
        },
        "model_metadata_v2": {
            "http": h.get_model_metadata("fraud", "2"),
            "grpc": _dict(g.get_model_metadata("fraud", "2")),
        },
        "model_config": {
            "http": h.get_model_config("fraud"),
            "grpc": _dict(g.get_model_config("fraud").config),
        },
    }

    # fraud through each face: JSON tensors, binary tensors, gRPC.
    def http_infer(binary: bool, version: str = "") -> dict[str, Any]:
        x = th.InferInput("transaction", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows, binary_data=binary)
        want = th.InferRequestedOutput("fraud_probability", binary_data=binary)
        result = h.infer("fraud", [x], model_version=version, outputs=[want], request_id="r-1")
        return {
            "output": result.as_numpy("fraud_probability").tolist(),
            "response": result.get_response(),
        }

    x = tg.InferInput("transaction", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    grpc_result = g.infer("fraud", [x], request_id="r-1")
    out["infer"] = {
        "http_json": http_infer(False),
        "http_binary": http_infer(True),
        "http_v2": http_infer(False, "2"),
        "grpc": {
            "output": grpc_result.as_numpy("fraud_probability").tolist(),
            "response": _dict(grpc_result.get_response()),
        },
    }
    # Compressed both ways (Content-Encoding on the request, Accept-Encoding for the answer).
    compressed = {}
    for there, back in (("gzip", "deflate"), ("deflate", "gzip")):
        for binary in (False, True):
            xc = th.InferInput("transaction", list(rows.shape), "FP32")
            xc.set_data_from_numpy(rows, binary_data=binary)
            result = h.infer(
                "fraud",
                [xc],
                outputs=[th.InferRequestedOutput("fraud_probability", binary_data=binary)],
                request_compression_algorithm=there,
                response_compression_algorithm=back,
            )
            compressed[f"{there}-{back}-{binary}"] = result.as_numpy("fraud_probability").tolist()
    out["compressed"] = compressed
    # No outputs named: tritonclient.http asks binary_data_output, so all come back binary.
    x_all = th.InferInput("transaction", list(rows.shape), "FP32")
    x_all.set_data_from_numpy(rows, binary_data=False)
    unnamed = h.infer("fraud", [x_all])
    out["infer_unnamed"] = unnamed.as_numpy("fraud_probability").tolist()

    # Every datatype of the dtypes model; FP16 has no JSON form, so it travels binary.
    arrays = _dtype_arrays()
    inputs = []
    for dt in DTYPES:
        x_dt = th.InferInput(f"IN_{dt}", [2, 4], dt)
        x_dt.set_data_from_numpy(arrays[dt], binary_data=dt == "FP16")
        inputs.append(x_dt)
    wanted = [th.InferRequestedOutput(f"OUT_{dt}", binary_data=False) for dt in DTYPES]
    json_result = h.infer("dtypes", inputs, outputs=wanted)
    binary_inputs = []
    for dt in DTYPES:
        x_dt = th.InferInput(f"IN_{dt}", [2, 4], dt)
        x_dt.set_data_from_numpy(arrays[dt], binary_data=True)
        binary_inputs.append(x_dt)
    binary_result = h.infer(
        "dtypes", binary_inputs, outputs=[th.InferRequestedOutput(f"OUT_{dt}") for dt in DTYPES]
    )
    out["dtypes"] = {
        "sent": {dt: _plain(arrays[dt]) for dt in DTYPES},
        "json": {dt: _plain(json_result.as_numpy(f"OUT_{dt}")) for dt in DTYPES},
        "binary": {dt: _plain(binary_result.as_numpy(f"OUT_{dt}")) for dt in DTYPES},
        "json_outputs": json_result.get_response()["outputs"],
    }

    # Classification: the same top-k through both faces.
    wide = np.random.default_rng(5).standard_normal((2, 512)).astype(np.float32)
    xh = th.InferInput("INPUT0", [2, 512], "FP32")
    xh.set_data_from_numpy(wide)
    classes_http = h.infer(
        "wide", [xh], outputs=[th.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=3)]
    )
    xg = tg.InferInput("INPUT0", [2, 512], "FP32")
    xg.set_data_from_numpy(wide)
    classes_grpc = g.infer(
        "wide", [xg], outputs=[tg.InferRequestedOutput("OUTPUT0", class_count=3)]
    )
    out["classification"] = {
        "http": [[_text(v) for v in r] for r in classes_http.as_numpy("OUTPUT0").tolist()],
        "grpc": [[_text(v) for v in r] for r in classes_grpc.as_numpy("OUTPUT0").tolist()],
        "http_output": classes_http.get_response()["outputs"][0],
    }

    out["statistics"] = {
        "http": h.get_inference_statistics("fraud"),
        "grpc": _dict(g.get_inference_statistics("fraud")),
    }
    out["index"] = {
        "http": h.get_model_repository_index(),
        "grpc": _dict(g.get_model_repository_index()).get("models", []),
    }

    bad = th.InferInput("transaction", [1, 7], "FP32")
    bad.set_data_from_numpy(np.ones((1, 7), np.float32), binary_data=False)
    bad_g = tg.InferInput("transaction", [1, 7], "FP32")
    bad_g.set_data_from_numpy(np.ones((1, 7), np.float32))
    out["errors"] = {
        "unknown_model": {
            "http": _error(lambda: h.get_model_metadata("no-such-model")),
            "grpc": _error(lambda: g.get_model_metadata("no-such-model")),
        },
        "unknown_model_infer": {
            "http": _error(lambda: h.infer("no-such-model", [bad])),
            "grpc": _error(lambda: g.infer("no-such-model", [bad_g])),
        },
        "bad_tensor": {
            "http": _error(lambda: h.infer("fraud", [bad])),
            "grpc": _error(lambda: g.infer("fraud", [bad_g])),
        },
        "unknown_version_ready": {
            "http": _error(lambda: h.is_model_ready("fraud", "99")),
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
