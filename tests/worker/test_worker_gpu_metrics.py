"""GPU series (issue 12): from NVML when it finds a GPU, absent otherwise, never an error.

This machine has no GPU, so NVML is replaced by ``FakeNVML``: a stand-in object with the
pynvml functions the collector calls (nvmlInit, nvmlDeviceGetCount, ...HandleByIndex,
...UtilizationRates, ...MemoryInfo) returning fixed figures. The absent case runs against the
real suite's worker in tests/e2e/test_e2e_metrics.py.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from worker import gpu_metrics

PROMTOOL = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
GIB = 1024**3


class FakeNVML:
    """pynvml's surface as the collector uses it: two GPUs, the second failing on demand."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.broken: set[int] = set()
        self.initialised = False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.broken:
            raise RuntimeError("GPU is lost")  # pynvml raises NVMLError_GpuIsLost
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=[37, 90][handle], memory=5)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=(handle + 1) * GIB, total=80 * GIB, free=0)


def samples(text: str) -> dict[tuple[str, str], float]:
    found = re.findall(r'^(modelserve_gpu_\w+)\{gpu="(\d+)"\} (\S+)$', text, re.MULTILINE)
    return {(name, gpu): float(v) for name, gpu, v in found}


def with_fake(monkeypatch: pytest.MonkeyPatch, fake: Any) -> CollectorRegistry:
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    registry = CollectorRegistry()
    assert gpu_metrics.install(registry)
    return registry


def test_fake_nvml_gpus_appear_per_index_with_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeNVML()
    registry = with_fake(monkeypatch, fake)
    assert fake.initialised
    assert samples(generate_latest(registry).decode()) == {
        ("modelserve_gpu_utilization_ratio", "0"): 0.37,
        ("modelserve_gpu_utilization_ratio", "1"): 0.90,
        ("modelserve_gpu_memory_used_bytes", "0"): 1 * GIB,
        ("modelserve_gpu_memory_used_bytes", "1"): 2 * GIB,
        ("modelserve_gpu_memory_total_bytes", "0"): 80 * GIB,
        ("modelserve_gpu_memory_total_bytes", "1"): 80 * GIB,
    }
    fake.broken.add(1)  # read at scrape time: a lost GPU drops out, the scrape still answers
    assert {gpu for _, gpu in samples(generate_latest(registry).decode())} == {"0"}


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool not installed (./dev does)")
def test_fake_nvml_series_pass_promtool(monkeypatch: pytest.MonkeyPatch) -> None:
    text = generate_latest(with_fake(monkeypatch, FakeNVML())).decode()
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


class NoDriver(FakeNVML):
    def nvmlInit(self) -> None:
        raise RuntimeError("NVML Shared Library Not Found")


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (None, "nvidia-ml-py is not installed"),
        (NoDriver(), "NVML did not start (NVML Shared Library Not Found)"),
        (FakeNVML(count=0), "NVML sees no GPU"),
    ],
)
def test_no_nvml_no_driver_or_no_gpu_means_no_series_and_one_info_line(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    module: Any,
    reason: str,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None: `import pynvml` fails
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger=gpu_metrics.__name__):
        assert not gpu_metrics.install(registry)
    assert "modelserve_gpu" not in generate_latest(registry).decode()
    (record,) = caplog.records
    assert record.levelno == logging.INFO and reason in record.getMessage()


def test_a_new_registry_is_never_taken_for_a_discarded_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """What went wrong in CI: a registry set up and then dropped can leave its memory (and so
    its id()) to the next one, which must still be judged on its own."""
    import gc

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(count=1))
    used: set[int] = set()
    for _ in range(20):  # CPython reuses the freed block at once; a few tries make it certain
        registry = CollectorRegistry()
        assert gpu_metrics.install(registry)
        used.add(id(registry))
        del registry
        gc.collect()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML from here on
    reused = 0
    for _ in range(20):
        fresh = CollectorRegistry()
        reused += id(fresh) in used
        assert not gpu_metrics.install(fresh), "a fresh registry counted as set up"
        del fresh
        gc.collect()
    assert reused, "no id was reused: this test proved nothing on this interpreter"
