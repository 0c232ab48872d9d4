"""T37 with a sentinel and a spy: an ONNX file whose weights are external data pointing out of
its model dir (``../../sentinel.bin``, an absolute path, a symlinked parent) is refused
FAILED_PRECONDITION by the worker and by the registry's push inspection, and the sentinel is
never opened nor changed by this process. The spy is Linux inotify on the sentinel, so opens
from C++ (ONNX Runtime) count as much as Python's. The sentinel holds valid weights: a loader
that followed the location would succeed, so a refusal is the check's doing."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, numpy_helper

from modelserve.cli import demo_models
from modelserve.errors import FailedPreconditionError
from registry.onnx_inspect import inspect_model
from worker.sessions import ModelSession

IN_ACCESS, IN_MODIFY, IN_OPEN, IN_NONBLOCK = 0x1, 0x2, 0x20, os.O_NONBLOCK
_libc = ctypes.CDLL(None, use_errno=True)


class Spy:
    """inotify on one file: every open, read or write of it by anyone, this process included."""

    def __init__(self, path: Path) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        mask = IN_OPEN | IN_ACCESS | IN_MODIFY
        assert _libc.inotify_add_watch(self.fd, str(path).encode(), mask) >= 0

    def events(self) -> list[int]:
        masks = []
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return masks
            except OSError as exc:  # pragma: no cover - EAGAIN spelled otherwise
                if exc.errno == errno.EAGAIN:
                    return masks
                raise
            offset = 0
            while offset < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, offset)
                masks.append(mask)
                offset += 16 + size

    def close(self) -> None:
        os.close(self.fd)


def pointing_at(location: str, weights: dict[str, np.ndarray]) -> bytes:
    """The fraud model with every initializer stored as external data at ``location``."""
    model = demo_models.fraud(1)
    offset = 0
    for tensor in model.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        weights[tensor.name] = numpy_helper.to_array(tensor)
        external_data_helper.set_external_data(
            tensor, location=location, offset=offset, length=len(raw)
        )
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        offset += len(raw)
    return model.SerializeToString()


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(model dir, sentinel): the sentinel sits two levels above the model dir."""
    model_dir = tmp_path / "models" / "m"
    model_dir.mkdir(parents=True)
    (model_dir / "up").symlink_to(tmp_path)  # a symlinked parent
    yield model_dir, tmp_path / "sentinel.bin"


@pytest.mark.parametrize("where", ["../../sentinel.bin", "absolute", "up/sentinel.bin"])
async def test_external_data_pointing_out_is_refused_and_the_sentinel_never_opened(
    layout: tuple[Path, Path], where: str
) -> None:
    model_dir, sentinel = layout
    location = str(sentinel) if where == "absolute" else where
    weights: dict[str, np.ndarray] = {}
    data = pointing_at(location, weights)
    sentinel.write_bytes(b"".join(w.tobytes() for w in weights.values()))  # valid weights
    before = (sentinel.read_bytes(), sentinel.stat().st_mtime_ns)
    path = model_dir / "model.onnx"
    path.write_bytes(data)
    spy = Spy(sentinel)
    try:
        with pytest.raises(FailedPreconditionError, match="external data"):
            await ModelSession.load(path, model="m", version=1)
        with pytest.raises(FailedPreconditionError, match="external data"):
            inspect_model(path)
        assert spy.events() == [], "the sentinel outside the model dir was opened"
    finally:
        spy.close()
    assert (sentinel.read_bytes(), sentinel.stat().st_mtime_ns) == before


def test_the_spy_sees_an_open(tmp_path: Path) -> None:
    """The premise: the spy reports this process opening the file."""
    watched = tmp_path / "f"
    watched.write_bytes(b"x")
    spy = Spy(watched)
    try:
        assert watched.read_bytes() == b"x"
        assert spy.events()
    finally:
        spy.close()
