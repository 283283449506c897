"""NVML sampler: a background thread reading per-GPU utilization, memory and power.

Why a thread with a fixed interval: canary load runs for a window and the gate judges that
window, so the sampler starts before load and stops after it; NVML's utilization counter is
itself an average over its own sample period (1/6 s to 1 s depending on the GPU), so 100 ms
is dense enough. Opening NVML happens in the thread, so a wedged driver cannot hang the
caller; any failure ends in :attr:`UtilizationSamples.error`, which the floor gate turns
into ``nodata`` with that reason (never a pass).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import pynvml

from gates.utilization.samples import GpuSamples, UtilizationSamples

__all__ = ["GpuReader", "GpuReading", "NvmlReader", "NvmlSampler"]


@dataclass(frozen=True)
class GpuReading:
    """One read of one GPU."""

    utilization_pct: float
    memory_used_mib: float
    power_w: float


class GpuReader(Protocol):
    """Where readings come from (NVML in production; tests may supply their own)."""

    def open(self) -> Sequence[tuple[str, str | None]]:
        """Start; return ``(id, model name)`` per GPU. Raises on failure."""
        ...

    def read(self, index: int) -> GpuReading:
        """Read GPU ``index`` (position in :meth:`open`'s list). Raises on failure."""
        ...

    def close(self) -> None:
        """Release the library."""
        ...


class NvmlReader:
    """:class:`GpuReader` over NVML (``nvidia-ml-py``)."""

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        self._indices = indices
        self._handles: list[Any] = []

    def open(self) -> list[tuple[str, str | None]]:
        pynvml.nvmlInit()
        indices = self._indices
        if indices is None:
            indices = range(pynvml.nvmlDeviceGetCount())
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        return [
            (str(pynvml.nvmlDeviceGetUUID(h)), str(pynvml.nvmlDeviceGetName(h)))
            for h in self._handles
        ]

    def read(self, index: int) -> GpuReading:
        h = self._handles[index]
        return GpuReading(
            utilization_pct=float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
            memory_used_mib=pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20,
            power_w=pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
        )

    def close(self) -> None:
        if self._handles:
            self._handles = []
            pynvml.nvmlShutdown()


class NvmlSampler:
    """Sample every ``interval_s`` between :meth:`start` and :meth:`stop` (or a ``with``).

    A read that fails is counted and skipped; the window's samples are what succeeded.
    """

    def __init__(self, interval_s: float = 0.1, reader: GpuReader | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = interval_s
        self._reader: GpuReader = reader if reader is not None else NvmlReader()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpus: list[tuple[str, str | None]] = []
        self._series: list[list[GpuReading]] = []
        self._error: str | None = None
        self._failed_reads = 0
        self._result: UtilizationSamples | None = None

    def start(self) -> None:
        """Start the sampling thread.

        Raises:
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            gpus = list(self._reader.open())
        except Exception as e:
            self._error = f"{type(e).__name__}: {e}"
            return
        self._gpus, self._series = gpus, [[] for _ in gpus]
        try:
            while True:
                for i, series in enumerate(self._series):
                    try:
                        series.append(self._reader.read(i))
                    except Exception:
                        self._failed_reads += 1
                if self._stop.wait(self.interval_s):
                    break
        finally:
            self._reader.close()

    def stop(self, timeout_s: float = 5.0) -> UtilizationSamples:
        """Stop sampling and return the window's samples (``error`` set if there are none).

        Calling it again returns the same samples.

        Raises:
            RuntimeError: never started.
        """
        if self._thread is None:
            raise RuntimeError("sampler was never started")
        if self._result is not None:
            return self._result
        self._stop.set()
        self._thread.join(timeout_s)
        error = self._error
        if self._thread.is_alive():
            error = f"NVML sampler did not stop within {timeout_s:g} s (driver hung?)"
        elif error is None and not self._gpus:
            error = "NVML lists no GPU"
        elif error is None and self._failed_reads and not any(self._series):
            error = f"all {self._failed_reads} NVML reads failed"
        gpus = tuple(
            GpuSamples(
                gpu=gpu_id,
                name=name,
                utilization_pct=tuple(r.utilization_pct for r in series),
                memory_used_mib=tuple(r.memory_used_mib for r in series),
                power_w=tuple(r.power_w for r in series),
            )
            for (gpu_id, name), series in zip(self._gpus, list(self._series), strict=True)
        )
        self._result = UtilizationSamples(source="nvml", metric="gpu_util", gpus=gpus, error=error)
        return self._result

    @property
    def samples(self) -> UtilizationSamples:
        """The window's samples once stopped (after a ``with`` block, for instance).

        Raises:
            RuntimeError: still sampling.
        """
        if self._result is None:
            raise RuntimeError("sampler is still running: call stop() first")
        return self._result

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
