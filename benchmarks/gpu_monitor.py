"""nvidia-smi sampled every 100 ms while a timed loop runs: SM clock, power, temperature. A compute-bound forward's
time follows the clock the power limit allows (`sustained_matmul.py`: the prefill's GEMMs back to back hold
1,446 MHz at the 700 W limit on an H200, against a 1,980 MHz boost), and a sample taken after the loop ends shows
an idling GPU instead (run 10 read 200 W after loops that drew 700)."""
from __future__ import annotations

import subprocess
import threading
import time

FIELDS = ("clocks.sm", "power.draw", "power.limit", "temperature.gpu")


class GpuMonitor:
    """``with GpuMonitor() as m: loop()`` then ``m.summary()``: None where nvidia-smi is missing."""

    def __init__(self, interval_ms: int = 100, gpu: int = 0):
        self.cmd = ["nvidia-smi", "-i", str(gpu), f"--query-gpu={','.join(FIELDS)}", "--format=csv,noheader,nounits",
                    "-lms", str(interval_ms)]
        self.samples: list[tuple[float, ...]] = []
        self._proc = None
        self._thread = None

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append((time.perf_counter(), *(float(x) for x in line.split(","))))
            except ValueError:
                continue

    def __enter__(self) -> "GpuMonitor":
        try:
            self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.15)  # nvidia-smi's first line
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
            self._thread.join(timeout=5)

    def summary(self) -> dict | None:
        s = self.samples
        if not s:
            return None
        return {"samples": len(s), "sm_clock_mhz_mean": round(sum(x[1] for x in s) / len(s)),
                "sm_clock_mhz_min": min(x[1] for x in s), "power_w_max": max(x[2] for x in s),
                "power_limit_w": s[-1][3], "temperature_c_max": max(x[4] for x in s)}
