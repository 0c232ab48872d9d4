"""GPU utilisation and memory per GPU from NVML, read at scrape time.

``modelserve_gpu_utilization_ratio``, ``modelserve_gpu_memory_used_bytes`` and
``modelserve_gpu_memory_total_bytes``, labelled ``gpu="0"``, ``"1"``... (NVML's device index,
as CUDA_VISIBLE_DEVICES-free hosts number them). NVML comes from ``nvidia-ml-py`` (the
``gpu`` extra), imported only here and only when the worker starts: without it, without a
driver or without a GPU the series are simply absent and one INFO line says why; nothing a
CPU worker does depends on it. Like the queue-depth gauges, the figures cost the request path
nothing: NVML is asked when Prometheus scrapes.
"""

from __future__ import annotations

import importlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

UTILIZATION = "modelserve_gpu_utilization_ratio"
MEMORY_USED = "modelserve_gpu_memory_used_bytes"
MEMORY_TOTAL = "modelserve_gpu_memory_total_bytes"
# Registries a collector was added to. Weak, not id()s: a test's discarded registry can hand its
# id to the next one, which would then wrongly count as installed.
_installed: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()


class GpuCollector(Collector):
    """The three GPU gauges for devices ``0 .. count-1`` of ``nvml`` (the pynvml module, or
    anything with its nvmlDeviceGet* functions)."""

    def __init__(self, nvml: Any, count: int) -> None:
        self.nvml = nvml
        self.count = count

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                UTILIZATION,
                "Share of the last sample period in which a kernel ran on the GPU (NVML)",
                labels=["gpu"],
            ),
            GaugeMetricFamily(MEMORY_USED, "GPU memory in use (NVML)", labels=["gpu"]),
            GaugeMetricFamily(MEMORY_TOTAL, "GPU memory installed (NVML)", labels=["gpu"]),
        )

    def describe(self) -> Iterator[Metric]:
        # Registration asks for names; answering without NVML keeps it off the start-up path.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        utilization, used, total = self._families()
        for index in range(self.count):
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU lost or busy: its series skip this scrape
                log.debug("NVML could not read GPU %d: %s", index, exc)
                continue
            gpu = [str(index)]
            utilization.add_metric(gpu, rates.gpu / 100.0)
            used.add_metric(gpu, float(memory.used))
            total.add_metric(gpu, float(memory.total))
        yield from (utilization, used, total)


def install(registry: CollectorRegistry = REGISTRY) -> bool:
    """Export the GPU series into ``registry`` when NVML finds a GPU; True if it did."""
    if registry in _installed:
        return True
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        log.info("no GPU metrics: nvidia-ml-py is not installed (pip install 'modelserve[gpu]')")
        return False
    try:
        nvml.nvmlInit()
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPU here
        log.info("no GPU metrics: NVML did not start (%s)", exc)
        return False
    if count <= 0:
        log.info("no GPU metrics: NVML sees no GPU")
        return False
    registry.register(GpuCollector(nvml, count))
    _installed.add(registry)
    log.info("GPU metrics for %d GPU(s) from NVML", count)
    return True
