"""IO binding and inline runs give the same answers as a plain run. On this CPU-only machine
targets host memory; with CUDA the same code binds device outputs (checked on a GPU machine
by bench/gpu_check.py when one is lent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelserve.errors import InvalidArgumentError, UnavailableError
from worker.sessions import ModelSession


@pytest.mark.parametrize(
    ("file", "name", "width"), [("tabular.onnx", "INPUT0", 32), ("fraud_v1.onnx", "transaction", 8)]
)
async def test_bound_run_equals_plain_run(demo_dir: Path, file: str, name: str, width: int) -> None:
    session = await ModelSession.load(demo_dir / file, model="m", version=1, io_binding="on")
    try:
        assert session.io_binding
        x = np.random.default_rng(3).standard_normal((5, width)).astype(np.float32)
        got = await session.run({name: x})
        reference = ort.InferenceSession(str(demo_dir / file), providers=["CPUExecutionProvider"])
        want = reference.run(None, {name: x})
        np.testing.assert_allclose(next(iter(got.values())), want[0], rtol=1e-6)
    finally:
        session.close()


async def test_auto_binds_only_on_cuda_and_never_for_text(demo_dir: Path) -> None:
    plain = await ModelSession.load(demo_dir / "tabular.onnx", model="m", version=1)
    text = await ModelSession.load(demo_dir / "dtypes.onnx", model="d", version=1, io_binding="on")
    try:
        assert plain.io_binding == (plain.execution_provider == "CUDAExecutionProvider")
        assert not text.io_binding  # BYTES tensors cannot be bound to a device
        with pytest.raises(InvalidArgumentError):
            plain.configure_io_binding("sometimes")
    finally:
        plain.close()
        text.close()


async def test_tiny_models_run_inline_and_answer_the_same(demo_dir: Path) -> None:
    session = await ModelSession.load(demo_dir / "tabular.onnx", model="t", version=1)
    try:
        x = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
        threaded = await session.run({"INPUT0": x})
        assert await session.measure_inline(64, threshold_us=1e9) > 0 and session.inline
        inline = await session.run({"INPUT0": x})
        np.testing.assert_array_equal(inline["OUTPUT0"], threaded["OUTPUT0"])
        await session.measure_inline(64, threshold_us=1e-9)  # nothing is that fast
        assert not session.inline
    finally:
        session.close()


async def test_a_model_far_over_the_inline_bar_is_timed_once(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven timed runs only when the model might be under the bar: a slow model's load would
    otherwise pay seven of its runs (seconds each) to learn what one run shows."""
    session = await ModelSession.load(demo_dir / "tabular.onnx", model="t", version=1)
    runs = []
    real_run = session._run_sync

    def counted(*args: object) -> object:
        runs.append(1)
        return real_run(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(session, "_run_sync", counted)
    try:
        await session.measure_inline(64, threshold_us=1e-9)
        assert len(runs) == 1 and not session.inline
        runs.clear()
        await session.measure_inline(64, threshold_us=1e9)
        assert len(runs) == 7 and session.inline
    finally:
        session.close()


async def test_unbatched_waiting_is_bounded(demo_dir: Path) -> None:
    """Models without a batch dimension bypass the batcher; their wait is bounded too."""
    session = await ModelSession.load(demo_dir / "tabular.onnx", model="t", version=1)
    try:
        session.max_waiting = 0
        instance = session._free.get_nowait()  # the only instance is busy
        with pytest.raises(UnavailableError, match="queue full"):
            await session.run({"INPUT0": np.ones((1, 32), np.float32)})
        session._free.put_nowait(instance)
        assert (await session.run({"INPUT0": np.ones((1, 32), np.float32)}))["OUTPUT0"].shape == (
            1,
            1,
        )
    finally:
        session.close()


@pytest.mark.parametrize("spinning", [False, True])
async def test_spinning_setting_reaches_onnx_runtime(demo_dir: Path, spinning: bool) -> None:
    session = await ModelSession.load(
        demo_dir / "tabular.onnx", model="t", version=1, allow_spinning=spinning
    )
    try:
        options = session._instances[0].session.get_session_options()
        value = options.get_session_config_entry("session.intra_op.allow_spinning")
        assert value == ("1" if spinning else "0")
    finally:
        session.close()
