"""Which execution provider a version runs on, and how its ONNX Runtime sessions are made.

CUDA is used when it really loads (onnxruntime-gpu falls back to CPU silently otherwise, so the
first session's providers are checked); ``cpu`` forces CPU, ``cuda`` refuses to fall back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from modelserve.errors import FailedPreconditionError, InvalidArgumentError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
EXECUTION_PROVIDERS = ("auto", "cpu", "cuda")
MAX_INSTANCES = 32

# Every exception class ONNX Runtime's bindings raise (Fail, InvalidArgument, ...).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception)
)
_LOAD_ERRORS: tuple[type[Exception], ...] = (*ORT_ERRORS, RuntimeError, ValueError, OSError)
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/][^\s'\"()\[\],]*")
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class SessionOptions:
    label: str
    requested: str  # "auto", "cpu" or "cuda"
    intra_op_threads: int
    inter_op_threads: int
    cuda_options: dict[str, str]
    allow_spinning: bool = False


def session_options(
    label: str, requested: str, instances: int, intra: int, inter: int
) -> SessionOptions:
    check_range("instance_count", instances, 1, MAX_INSTANCES)
    check_range("intra_op_threads", intra, 0, 1024)
    check_range("inter_op_threads", inter, 1, 1024)
    if requested not in EXECUTION_PROVIDERS:
        raise InvalidArgumentError(
            f"execution_provider for {label} must be one of {', '.join(EXECUTION_PROVIDERS)};"
            f" got {requested[:32]!r}"
        )
    # Cores this process may use (cgroup/taskset aware), shared so C x threads <= cores.
    intra = intra or max(1, len(os.sched_getaffinity(0)) // instances)
    return SessionOptions(label, requested, intra, inter, {})


def cuda_options(gpu_mem_limit: int, instances: int, device_id: int) -> dict[str, str]:
    check_range("gpu_mem_limit", gpu_mem_limit, 0, 1 << 50)
    options = {"device_id": str(device_id)}
    if gpu_mem_limit:
        # The arena limit is per session, the budget for the version's instances together;
        # kSameAsRequested keeps an arena from doubling past its limit in one step.
        options["gpu_mem_limit"] = str(gpu_mem_limit // instances)
        options["arena_extend_strategy"] = "kSameAsRequested"
    return options


def check_range(what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgumentError(f"{what} must be between {low} and {high}; got {value}")


def create_first(
    data: bytes, options: SessionOptions
) -> tuple[ort.InferenceSession, list[Any], str]:
    """Create the first session, deciding the provider; returns (session, providers, why)."""
    cpu_only: list[Any] = [CPU]
    if options.requested == "cpu":
        return create(data, options, cpu_only), cpu_only, "execution_provider is cpu"
    if CUDA not in ort.get_available_providers():
        why = "CUDA is not in this ONNX Runtime build"
    else:
        cuda: list[Any] = [(CUDA, options.cuda_options), CPU]
        try:
            session = create(data, options, cuda)
        except FailedPreconditionError as exc:
            why = f"CUDA failed to start: {exc.message}"
        else:
            # onnxruntime-gpu falls back to CPU silently when CUDA/cuDNN do not load.
            if session.get_providers()[0] == CUDA:
                return session, cuda, f"execution_provider is {options.requested}, CUDA loaded"
            why = "CUDA did not load (check the GPU driver and the CUDA/cuDNN libraries)"
    if options.requested == "cuda":
        raise FailedPreconditionError(
            f"{options.label} asks for execution_provider cuda but {why}; "
            "use auto or cpu, or run the worker's GPU image on a GPU host"
        )
    return create(data, options, cpu_only), cpu_only, f"execution_provider is auto and {why}"


def create(data: bytes, options: SessionOptions, providers: list[Any]) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT's warnings are graph-optimiser chatter
    # Spinning intra-op threads burn the cores the other services of this box need (measured
    # for `wide` at batch 1 with idle gaps: spinning halves latency, 0.47 vs 0.90 ms, at three
    # times the CPU per run, 3.1 vs 1.1 ms), so it is off unless the worker owns its host.
    so.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
    )
    try:
        # From bytes: with no model directory, no tensor location can resolve to a file.
        return ort.InferenceSession(data, sess_options=so, providers=providers)
    except _LOAD_ERRORS as exc:
        raise FailedPreconditionError(
            f"ONNX Runtime could not load {options.label}: {ort_message(exc)}"
        ) from exc


def ort_message(exc: BaseException) -> str:
    """ORT's message on one bounded line, without its error-code prefix or any file path."""
    text = _ORT_PREFIX.sub("", str(exc).strip())
    text = _PATH.sub("<path>", " ".join(text.split()))
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."
