"""ModelSession with real ONNX Runtime sessions: same answers as plain ORT, a bounded pool."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from testsupport import eventually

from modelserve.cli import demo_models
from modelserve.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from modelserve.tensors import TensorSpec
from worker.ort_values import dummy_inputs
from worker.sessions import ModelSession

RNG = np.random.default_rng(7)


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a plain ONNX Runtime session answers for the same file and inputs.

    ORT's Python binding takes and gives string tensors as str, so BYTES are decoded on the
    way in and encoded on the way out, as the worker promises bytes both ways.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    text = {k: recode(v, bytes.decode) for k, v in feeds.items()}
    outputs = session.run(names, text)
    return {k: recode(v, str.encode) for k, v in zip(names, outputs, strict=True)}


def recode(value: np.ndarray, fn: Any) -> np.ndarray:
    if value.dtype != object:
        return value
    return np.array([fn(v) for v in value.flat], dtype=object).reshape(value.shape)


def dtypes_inputs(batch: int) -> dict[str, np.ndarray]:
    words = np.array([b"", b"a", b"nul\x00inside", "é€😀".encode()] * batch, dtype=object)
    return {
        "IN_FP32": RNG.standard_normal((batch, 4)).astype(np.float32),
        "IN_FP16": RNG.standard_normal((batch, 4)).astype(np.float16),
        "IN_INT32": RNG.integers(-(2**31), 2**31 - 1, (batch, 4), dtype=np.int32),
        "IN_INT64": RNG.integers(-(2**62), 2**62, (batch, 4), dtype=np.int64),
        "IN_BOOL": RNG.integers(0, 2, (batch, 4)).astype(np.bool_),
        "IN_BYTES": words.reshape(batch, 4),
    }


async def load(path: Path, **kwargs: Any) -> ModelSession:
    return await ModelSession.load(path, model=path.stem, version=1, **kwargs)


@pytest.mark.parametrize(
    ("name", "feeds"),
    [
        ("fraud", {"transaction": RNG.standard_normal((5, 8)).astype(np.float32)}),
        ("tabular", {"INPUT0": RNG.standard_normal((3, 32)).astype(np.float32)}),
        ("dtypes", dtypes_inputs(3)),
    ],
)
async def test_outputs_equal_a_plain_onnxruntime_session(
    model_paths: dict[str, Path], name: str, feeds: dict[str, np.ndarray]
) -> None:
    session = await load(model_paths[name], instance_count=2)
    try:
        got = await session.run(feeds)
    finally:
        session.close()

    want = reference(model_paths[name], feeds)
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


async def test_output_names_select_and_order_the_outputs(model_paths: dict[str, Path]) -> None:
    session = await load(model_paths["dtypes"])
    feeds = dtypes_inputs(2)
    got = await session.run(feeds, ["OUT_BYTES", "OUT_FP16"])
    session.close()

    assert list(got) == ["OUT_BYTES", "OUT_FP16"]
    assert got["OUT_FP16"].dtype == np.float16
    # BYTES come back as the very bytes that went in (ORT's own binding would give str).
    assert got["OUT_BYTES"].tolist() == feeds["IN_BYTES"].tolist()
    assert all(type(v) is bytes for v in got["OUT_BYTES"].flat)


async def test_bytes_that_are_not_utf8_are_an_invalid_argument(
    model_paths: dict[str, Path],
) -> None:
    session = await load(model_paths["dtypes"])
    feeds = dtypes_inputs(1)
    feeds["IN_BYTES"] = np.array([[b"\xff", b"", b"", b""]], dtype=object)
    try:
        with pytest.raises(InvalidArgumentError, match=r"'IN_BYTES'.*not UTF-8"):
            await session.run(feeds)
    finally:
        session.close()


async def test_two_instances_run_two_requests_at_once_and_never_more(
    model_paths: dict[str, Path],
) -> None:
    session = await load(model_paths["wide"], instance_count=2)
    feeds = {"INPUT0": np.ones((256, 512), np.float32)}  # tens of ms per run
    try:
        results = await asyncio.gather(*(session.run(feeds) for _ in range(6)))
    finally:
        session.close()

    # Counted inside the executor threads while ORT ran.
    assert session.peak_busy_instances == 2
    assert all(np.array_equal(r["OUTPUT0"], results[0]["OUTPUT0"]) for r in results)


async def test_one_instance_runs_one_request_at_a_time(model_paths: dict[str, Path]) -> None:
    session = await load(model_paths["wide"], instance_count=1)
    feeds = {"INPUT0": np.ones((64, 512), np.float32)}
    await asyncio.gather(*(session.run(feeds) for _ in range(4)))
    session.close()

    assert session.peak_busy_instances == 1


@pytest.mark.parametrize("name", ["fraud", "tabular", "wide", "dtypes"])
async def test_warmup_runs_every_demo_model_and_reports_a_cold_start(
    model_paths: dict[str, Path], name: str
) -> None:
    session = await load(model_paths[name], instance_count=2)
    cold_start_ms = await session.warmup(3, batch_sizes=(1, 4))
    session.close()

    assert cold_start_ms == session.cold_start_ms
    assert cold_start_ms > session.load_ms > 0


def test_dummy_inputs_follow_the_signature() -> None:
    specs = [
        TensorSpec("a", "FP16", (-1, 3, -1)),
        TensorSpec("b", "BYTES", (-1, 2)),
        TensorSpec("c", "BOOL", (2,)),
        TensorSpec("d", "INT64", (-1,)),
    ]
    feeds = dummy_inputs(specs, 8, "m v1")

    assert feeds["a"].shape == (8, 3, 1) and feeds["a"].dtype == np.float16
    assert feeds["b"].dtype == object and feeds["b"].tolist() == [[b"", b""]] * 8
    assert feeds["c"].shape == (2,) and feeds["c"].dtype == np.bool_
    assert feeds["d"].shape == (8,) and feeds["d"].dtype == np.int64
    assert not feeds["a"].any()


async def test_auto_runs_on_cpu_here_and_says_so_once(
    model_paths: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.sessions"):
        session = await load(model_paths["fraud"], execution_provider="auto", instance_count=2)
    session.close()

    assert session.execution_provider == "CPUExecutionProvider"
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.sessions"]
    assert len(lines) == 1
    assert "fraud v1 runs on CPUExecutionProvider" in lines[0] and "auto" in lines[0]


async def test_cpu_runs_on_cpu(model_paths: dict[str, Path]) -> None:
    session = await load(model_paths["fraud"], execution_provider="cpu")
    session.close()
    assert session.execution_provider == "CPUExecutionProvider"


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="needs a CPU-only ORT"
)
async def test_cuda_without_cuda_fails_the_load(model_paths: dict[str, Path]) -> None:
    with pytest.raises(FailedPreconditionError) as raised:
        await load(model_paths["fraud"], execution_provider="cuda")
    assert "cuda" in raised.value.message.lower()


async def test_bad_settings_are_invalid_arguments(model_paths: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgumentError):
        await load(model_paths["fraud"], execution_provider="tpu")
    with pytest.raises(InvalidArgumentError):
        await load(model_paths["fraud"], instance_count=0)


async def test_input_problems_are_invalid_arguments_without_paths(
    model_paths: dict[str, Path],
) -> None:
    session = await load(model_paths["fraud"])
    try:
        with pytest.raises(InvalidArgumentError) as raised:
            await session.run({"transaction": np.zeros((2, 7), np.float32)})
        assert "Got: 7 Expected: 8" in raised.value.message
        assert "/" not in raised.value.message.replace("inputs/outputs", "")
        with pytest.raises(InvalidArgumentError):
            await session.run({"transaction": np.zeros((2, 8), np.float64)})
        with pytest.raises(InvalidArgumentError):
            await session.run({})
        with pytest.raises(InvalidArgumentError, match="no output 'nope'"):
            await session.run({"transaction": np.zeros((1, 8), np.float32)}, ["nope"])
        # The pool is intact after the failures.
        out = await session.run({"transaction": np.zeros((1, 8), np.float32)})
        assert out["fraud_probability"].shape == (1, 1)
    finally:
        session.close()


async def test_a_cancelled_run_returns_its_instance_when_ort_is_done(
    model_paths: dict[str, Path],
) -> None:
    session = await load(model_paths["wide"], instance_count=1)
    feeds = {"INPUT0": np.ones((256, 512), np.float32)}
    running = asyncio.ensure_future(session.run(feeds))
    waiting = asyncio.ensure_future(session.run(feeds))
    await asyncio.sleep(0.005)
    running.cancel()
    waiting.cancel()

    out = await session.run(feeds)
    session.close()

    assert out["OUTPUT0"].shape == (256, 10)
    assert session.peak_busy_instances == 1
    assert running.cancelled() and waiting.cancelled()


async def test_close_turns_away_new_and_waiting_requests(model_paths: dict[str, Path]) -> None:
    session = await load(model_paths["wide"], instance_count=1)
    feeds = {"INPUT0": np.ones((256, 512), np.float32)}
    running = asyncio.ensure_future(session.run(feeds))
    waiting = asyncio.ensure_future(session.run(feeds))
    await asyncio.sleep(0.005)

    session.close()

    assert (await running)["OUTPUT0"].shape == (256, 10)  # in flight: finishes normally
    with pytest.raises(UnavailableError):
        await waiting
    with pytest.raises(UnavailableError):
        await session.run(feeds)


async def test_close_with_terminate_aborts_the_run_in_flight(model_paths: dict[str, Path]) -> None:
    session = await load(model_paths["wide"], instance_count=1, intra_op_threads=1)
    feeds = {"INPUT0": np.ones((2048, 512), np.float32)}  # long enough to be caught running
    running = asyncio.ensure_future(session.run(feeds))
    while session.busy_instances == 0:  # noqa: ASYNC110 - the counter lives in ORT's thread
        await asyncio.sleep(0.001)

    session.close(terminate=True)

    with pytest.raises(UnavailableError, match="unloaded while the request ran"):
        await running


async def test_a_file_that_is_not_onnx_fails_the_load_without_its_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(FailedPreconditionError) as raised:
        await load(path)
    assert str(tmp_path) not in raised.value.message


async def test_external_data_is_refused(tmp_path: Path) -> None:
    model = demo_models.fraud(1)
    onnx.save_model(
        model,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    with pytest.raises(FailedPreconditionError, match="external data"):
        await load(tmp_path / "ext.onnx")


async def test_a_run_whose_caller_left_is_stopped_and_the_instance_runs_on(
    model_paths: dict[str, Path],
) -> None:
    """RunOptions.terminate for a run nobody waits for any more; the flag is reset before the
    instance serves the next request, which then runs to the end."""
    session = await load(model_paths["wide"], instance_count=1, intra_op_threads=1)
    feeds = {"INPUT0": np.ones((2048, 512), np.float32)}  # long enough to be caught running
    running = asyncio.ensure_future(session.run(feeds))
    while session.busy_instances == 0:  # noqa: ASYNC110 - the counter lives in ORT's thread
        await asyncio.sleep(0.001)
    running.cancel()

    async def stopped() -> None:
        assert session.stopped_runs == 1

    await eventually(stopped, timeout=10)
    small = {"INPUT0": np.ones((4, 512), np.float32)}
    out = await session.run(small)  # the same instance, terminate flag cleared
    assert out["OUTPUT0"].shape == (4, 10)
    assert session.stopped_runs == 1
    session.close()
