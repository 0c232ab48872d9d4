"""Values as ONNX Runtime takes and gives them: warmup inputs, and BYTES tensors (ORT's Python
binding wants str and answers str; V2 BYTES are bytes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelserve.errors import FailedPreconditionError, InvalidArgumentError
from modelserve.tensors import DTYPES, TensorSpec


def dummy_inputs(specs: Sequence[TensorSpec], batch_size: int, label: str) -> dict[str, np.ndarray]:
    """Zero-valued inputs for ``specs``: a -1 first dim -> ``batch_size``, other -1 dims -> 1."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(
            (batch_size if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape)
        )
        dtype = DTYPES[spec.datatype].numpy
        if dtype is None:
            raise FailedPreconditionError(
                f"{label} input {spec.name!r} is {spec.datatype}, which this worker cannot feed"
            )
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def text_for_ort(value: np.ndarray, name: str, label: str) -> np.ndarray:
    """BYTES elements as str: ORT's Python binding turns a bytes object into "b'...'" text."""
    if value.dtype.kind not in "OS":
        return value
    try:
        items = [v.decode() if isinstance(v, bytes) else v for v in value.flat]
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            f"{label}: BYTES input {name!r} holds an element that is not UTF-8; "
            "ONNX Runtime string tensors carry UTF-8 text only"
        ) from None
    text = np.empty(value.shape, dtype=object)
    text.flat[:] = items
    return text


def bytes_from_ort(value: np.ndarray) -> np.ndarray:
    """ORT answers string tensors as str; BYTES outputs are bytes, like the inputs."""
    if value.dtype != object:
        return value
    raw = np.empty(value.shape, dtype=object)
    raw.flat[:] = [v.encode() if isinstance(v, str) else v for v in value.flat]
    return raw
