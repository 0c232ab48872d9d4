"""The gateway's V2 REST face through the real suite, with real clients: tritonclient.http
(answers equal to tritonclient.grpc's for the same calls), curl, and perf_analyzer -i http
when its libraries are installed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_e2e_clients import CLIENTS, ort_run

from modelserve.cli.suite import Suite
from modelserve.cli.up import banner, wait_models_ready

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "modelserve"
ROWS = np.random.default_rng(11).standard_normal((3, 8)).astype(np.float32)
FRAUD_JSON = {
    "inputs": [
        {
            "name": "transaction",
            "datatype": "FP32",
            "shape": [1, 8],
            "data": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]],
        }
    ]
}


async def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=timeout
    )


async def curl(*args: str) -> tuple[int, str]:
    """(HTTP status, body) of one curl call."""
    proc = await run("curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args)
    assert proc.returncode == 0, proc.stderr
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), body


def _ints(value: Any) -> Any:
    """json_format's quoted int64 as numbers, so gRPC dicts compare with REST JSON."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _no_zeros(value: Any) -> Any:
    """REST statistics write zero counts (as Triton's); json_format leaves them out."""
    if isinstance(value, dict):
        out = {k: _no_zeros(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (0, {}, [])}
    if isinstance(value, list):
        return [_no_zeros(v) for v in value]
    return value


def _within(small: Any, big: Any, path: str = "") -> None:
    """Every field of ``small`` is in ``big`` with the same value."""
    if isinstance(small, dict):
        assert isinstance(big, dict), path
        for k, v in small.items():
            assert k in big, f"{path}.{k} missing"
            _within(v, big[k], f"{path}.{k}")
    elif isinstance(small, list):
        assert isinstance(big, list) and len(small) == len(big), path
        for i, (a, b) in enumerate(zip(small, big, strict=True)):
            _within(a, b, f"{path}[{i}]")
    else:
        assert _ints(small) == _ints(big), f"{path}: {small!r} != {big!r}"


async def test_tritonclient_http_answers_as_grpc_does(suite: Suite, demo_dir: Path) -> None:
    proc = await run(
        sys.executable,
        str(CLIENTS / "triton_http_client.py"),
        suite.address("gateway"),
        suite.http_address(),
        json.dumps(ROWS.tolist()),
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    for key in ("live", "ready", "model_ready", "model_ready_v2"):
        assert seen[key] == {"http": True, "grpc": True}, key
    assert seen["server_metadata"]["http"] == seen["server_metadata"]["grpc"]
    assert "binary_tensor_data" in seen["server_metadata"]["http"]["extensions"]
    for key in ("model_metadata", "model_metadata_v2"):
        assert _ints(seen[key]["http"]) == _ints(seen[key]["grpc"]), key
    assert seen["model_metadata"]["http"]["inputs"][0]["shape"] == [-1, 8]  # numbers, as Triton
    config = seen["model_config"]
    _within(config["grpc"], config["http"])
    assert config["http"]["max_batch_size"] == 64 and config["http"]["input"][0]["dims"] == [8]

    expected = ort_run(demo_dir / "fraud_v1.onnx", {"transaction": ROWS})["fraud_probability"]
    infer = seen["infer"]
    for face in ("http_json", "http_binary", "grpc"):
        np.testing.assert_allclose(np.asarray(infer[face]["output"], np.float32), expected)
        assert infer[face]["output"] == infer["grpc"]["output"], face
    assert infer["http_json"]["response"]["model_version"] == "1"  # production label -> v1
    assert infer["http_json"]["response"]["id"] == "r-1"
    json_out = infer["http_json"]["response"]["outputs"][0]
    assert json_out["shape"] == [3, 1] and len(json_out["data"]) == 3  # flat, as Triton
    binary_out = infer["http_binary"]["response"]["outputs"][0]
    assert binary_out["parameters"] == {"binary_data_size": 12} and "data" not in binary_out
    assert infer["http_v2"]["response"]["model_version"] == "2"
    expected_v2 = ort_run(demo_dir / "fraud_v2.onnx", {"transaction": ROWS})["fraud_probability"]
    np.testing.assert_allclose(np.asarray(infer["http_v2"]["output"], np.float32), expected_v2)
    assert seen["infer_unnamed"] == infer["grpc"]["output"]
    assert len(seen["compressed"]) == 4
    for key, output in seen["compressed"].items():
        assert output == infer["grpc"]["output"], key

    dtypes = seen["dtypes"]
    assert dtypes["json"] == dtypes["sent"]  # BYTES in and out as strings; FP16 binary
    assert dtypes["binary"] == dtypes["sent"]
    by_name = {o["name"]: o for o in dtypes["json_outputs"]}
    assert by_name["OUT_BYTES"]["data"] == [v for row in dtypes["sent"]["BYTES"] for v in row]
    assert "data" not in by_name["OUT_FP16"]  # no JSON form: binary even when JSON is asked
    assert by_name["OUT_FP16"]["parameters"]["binary_data_size"] == 16
    assert by_name["OUT_BOOL"]["data"] == [v for row in dtypes["sent"]["BOOL"] for v in row]

    classes = seen["classification"]
    assert classes["http"] == classes["grpc"] and len(classes["http"][0]) == 3
    assert classes["http_output"]["datatype"] == "BYTES"
    assert classes["http_output"]["shape"] == [2, 3]

    stats = seen["statistics"]
    assert _no_zeros(_ints(stats["http"])) == _no_zeros(_ints(stats["grpc"]))
    # success/fail are the gateway's own view (the whole path; other tests' rejected requests
    # for fraud count as failures there): compared above between the two faces, and present.
    assert int(stats["http"]["model_stats"][0]["inference_stats"]["success"]["count"]) > 0
    assert seen["index"]["http"] == seen["index"]["grpc"]

    errors = seen["errors"]
    for key, status in (("unknown_model", "404"), ("unknown_model_infer", "404")):
        assert errors[key]["http"] == {"status": status, "message": errors[key]["grpc"]["message"]}
        assert errors[key]["grpc"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["bad_tensor"]["http"]["status"] == "400"
    assert errors["bad_tensor"]["http"]["message"] == errors["bad_tensor"]["grpc"]["message"]
    assert "dim 1 expected 8, got 7" in errors["bad_tensor"]["http"]["message"]


async def test_curl_health_metadata_and_json_infer(suite: Suite) -> None:
    base = f"http://{suite.http_address()}"
    assert await curl(f"{base}/v2/health/ready") == (200, "")
    assert await curl(f"{base}/v2/health/live") == (200, "")
    status, body = await curl(f"{base}/v2")
    assert status == 200 and json.loads(body)["name"] == "modelserve"
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(FRAUD_JSON), f"{base}/v2/models/fraud/infer"
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model_name"] == "fraud" and answer["model_version"] == "1"
    assert answer["outputs"][0]["datatype"] == "FP32" and len(answer["outputs"][0]["data"]) == 1
    flat = {"inputs": [{**FRAUD_JSON["inputs"][0], "data": FRAUD_JSON["inputs"][0]["data"][0]}]}
    status, flat_body = await curl(
        "-X", "POST", "-d", json.dumps(flat), f"{base}/v2/models/fraud/versions/1/infer"
    )
    assert status == 200 and json.loads(flat_body)["outputs"] == answer["outputs"]


async def test_curl_errors_have_tritons_status_and_body(suite: Suite) -> None:
    base = f"http://{suite.http_address()}"
    assert await curl(f"{base}/v2/models/no-such-model") == (
        404,
        json.dumps({"error": "unknown model 'no-such-model'"}, separators=(",", ":")),
    )
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(FRAUD_JSON), f"{base}/v2/models/no-such-model/infer"
    )
    assert status == 404 and json.loads(body) == {"error": "unknown model 'no-such-model'"}
    short = {"inputs": [{**FRAUD_JSON["inputs"][0], "data": [0.1, 0.2]}]}
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(short), f"{base}/v2/models/fraud/infer"
    )
    assert status == 400
    assert json.loads(body) == {
        "error": "input 'transaction': shape [1, 8] needs 8 values in 'data', got 2"
    }
    wrong_type = {"inputs": [{**FRAUD_JSON["inputs"][0], "datatype": "INT32", "data": [1] * 8}]}
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(wrong_type), f"{base}/v2/models/fraud/infer"
    )
    assert status == 400 and json.loads(body) == {
        "error": "input 'transaction': expected FP32, got INT32"
    }
    fp16 = {
        "inputs": [{"name": "IN_FP16", "datatype": "FP16", "shape": [1, 4], "data": [1, 2, 3, 4]}]
    }
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(fp16), f"{base}/v2/models/dtypes/infer"
    )
    assert status == 400 and json.loads(body) == {
        "error": "receiving FP16 data via JSON is not supported. Please use the binary data "
        "format for input IN_FP16"
    }
    status, body = await curl("-X", "POST", "-d", "{not json", f"{base}/v2/models/fraud/infer")
    assert status == 400 and json.loads(body)["error"].startswith(
        "failed to parse the request JSON"
    )
    assert await curl("-X", "POST", f"{base}/v2/health/ready") == (
        405,
        '{"error":"Method Not Allowed"}',
    )
    assert await curl(f"{base}/v2/nowhere") == (404, '{"error":"Not Found"}')
    status, body = await curl(
        "-X", "POST", "-H", "Content-Encoding: br", "-d", json.dumps(FRAUD_JSON),
        f"{base}/v2/models/fraud/infer",
    )  # fmt: skip
    assert status == 400 and "unsupported Content-Encoding 'br'" in json.loads(body)["error"]
    bad_class = {
        **FRAUD_JSON,
        "outputs": [{"name": "fraud_probability", "parameters": {"classification": 0}}],
    }
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(bad_class), f"{base}/v2/models/fraud/infer"
    )
    assert status == 400 and "classification" in json.loads(body)["error"]


async def test_repository_index_unload_and_load_over_http(suite: Suite, demo_dir: Path) -> None:
    pushed = await run(
        str(CLI), "models", "--registry", suite.address("registry"),
        "push", "rest_tabular", str(demo_dir / "tabular.onnx"),
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    await wait_models_ready(suite.address("gateway"), ["rest_tabular"], timeout=120)
    base = f"http://{suite.http_address()}"
    status, body = await curl("-X", "POST", f"{base}/v2/repository/index")
    assert status == 200
    assert {"name": "rest_tabular", "version": "1", "state": "READY"} in json.loads(body)
    status, body = await curl("-X", "POST", "-d", '{"ready": true}', f"{base}/v2/repository/index")
    assert status == 200 and all(m["state"] == "READY" for m in json.loads(body))

    assert await curl("-X", "POST", f"{base}/v2/repository/models/rest_tabular/unload") == (200, "")
    assert (await curl(f"{base}/v2/models/rest_tabular/ready"))[0] == 400  # Triton: not ready
    request = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 32], "data": [0.5] * 32}]
    }
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(request), f"{base}/v2/models/rest_tabular/infer"
    )
    assert status == 503 and "unloaded" in json.loads(body)["error"]
    status, body = await curl("-X", "POST", f"{base}/v2/repository/index")
    entry = next(m for m in json.loads(body) if m["name"] == "rest_tabular")
    assert entry == {
        "name": "rest_tabular",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }

    assert await curl("-X", "POST", f"{base}/v2/repository/models/rest_tabular/load") == (200, "")
    assert await curl(f"{base}/v2/models/rest_tabular/ready") == (200, "")
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(request), f"{base}/v2/models/rest_tabular/infer"
    )
    assert status == 200, body
    # A body over 1 KiB: curl sends Expect: 100-continue and would wait 1 s without an answer.
    wide = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [4, 32], "data": [0.123456] * 128}
        ]
    }
    started = time.monotonic()
    status, body = await curl(
        "-X", "POST", "-d", json.dumps(wide), f"{base}/v2/models/rest_tabular/infer"
    )
    assert status == 200 and len(json.dumps(wide)) > 1024, body
    assert time.monotonic() - started < 0.9
    status, body = await curl("-X", "POST", f"{base}/v2/repository/models/no-such-model/unload")
    assert status == 404 and json.loads(body) == {"error": "unknown model 'no-such-model'"}
    status, body = await curl(
        "-X",
        "POST",
        "-d",
        '{"parameters": {"config": "{}"}}',
        f"{base}/v2/repository/models/rest_tabular/load",
    )
    assert status == 501 and "config" in json.loads(body)["error"]  # UNIMPLEMENTED, as gRPC


def _perf_analyzer() -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import perf_analyzer  # bench/perf_analyzer.py: finds the binary and its libraries
    finally:
        sys.path.pop(0)
    return perf_analyzer.locate(install=False)


@pytest.mark.timeout(180)
async def test_perf_analyzer_over_http(suite: Suite, tmp_path: Path) -> None:
    tool = _perf_analyzer()
    if tool.problem:
        pytest.skip(f"perf_analyzer -i http not runnable here: {tool.problem}")
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            str(tool.path), "-m", "fraud", "-u", suite.http_address(), "-i", "http",
            "--concurrency-range", "2", "--measurement-interval", "1000",
            # A shared box is noisy: any two windows within 100 % count as stable.
            "--stability-percentage", "100", "--max-trials", "6",
            "-f", str(tmp_path / "pa.csv"),
        ],
        capture_output=True, text=True, timeout=150, env=tool.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Throughput" in proc.stdout
    header, row = (tmp_path / "pa.csv").read_text().splitlines()[:2]
    point = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(point["Inferences/Second"]) > 0, point


async def test_the_up_banner_curl_examples_work(suite: Suite) -> None:
    """`modelserve up` prints curl lines for its REST port; run them as printed."""
    lines = [line.strip() for line in banner(suite, ["fraud"]).splitlines()]
    curls = [line for line in lines if line.startswith("curl ")]
    assert len(curls) == 3, lines
    ready, metadata, infer = [await run("bash", "-c", line) for line in curls]
    assert ready.returncode == 0 and ready.stdout.strip() == "200"
    assert json.loads(metadata.stdout)["name"] == "fraud"
    answer = json.loads(infer.stdout)
    assert answer["outputs"][0]["name"] == "fraud_probability", infer.stdout


async def test_rest_requests_are_counted_by_route_and_status(suite: Suite) -> None:
    base = f"http://{suite.http_address()}"
    await curl("-X", "POST", "-d", json.dumps(FRAUD_JSON), f"{base}/v2/models/fraud/infer")
    await curl(f"{base}/v2/models/no-such-model")
    status, text = await curl(f"http://127.0.0.1:{suite.processes['gateway'].metrics_port}/metrics")
    assert status == 200
    counts = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("modelserve_http_requests_total{")
    }
    assert (
        counts['modelserve_http_requests_total{code="200",route="/v2/models/{model}/infer"}'] >= 1
    )
    assert counts['modelserve_http_requests_total{code="404",route="/v2/models/{model}"}'] >= 1
