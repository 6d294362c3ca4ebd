"""Helpers shared by the benchmark scripts: a peak-memory sampler and a fixed training batch."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

import psutil

from gradguide.tasks import get_task, resolve_data_root
from gradguide.tasks.base import Instance


class PeakRSS:
    """Largest RSS increase while the context is open (sampled in a thread)."""

    def __enter__(self) -> PeakRSS:
        self.proc = psutil.Process(os.getpid())
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.growth_mb = (self.peak - self.base) / 2**20


def batch_of(n: int) -> list[Instance]:
    root = resolve_data_root()
    task = get_task("sst2" if root else "demo-sentiment")
    xs = task.load(task.train_split, root)
    out = []
    for i in range(n):  # three sentences per prompt, cut to 64 tokens by the scorer
        text = " ".join(x.prompt for x in xs[3 * i : 3 * i + 3])
        out.append(Instance(f"b:{i}", text, xs[0].candidates, xs[3 * i].gold, xs[3 * i].label))
    return out


K = TypeVar("K", bound=Hashable)


def time_interleaved(
    arms: Mapping[K, Callable[[int], object]], steps: int
) -> tuple[dict[K, list[float]], dict[K, list[float]]]:
    """Run each arm's step function in turn, ``steps`` + 1 rounds, so machine noise hits every arm
    alike; round 0 warms up (allocates optimiser state) and is dropped. Returns the seconds and the
    peak RSS growth (MB, see PeakRSS) of every measured step, by arm."""
    times: dict[K, list[float]] = {k: [] for k in arms}
    peaks: dict[K, list[float]] = {k: [] for k in arms}
    for step in range(steps + 1):
        for name, step_fn in arms.items():
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                step_fn(step)
                dt = time.perf_counter() - t0
            if step:
                times[name].append(dt)
                peaks[name].append(mem.growth_mb)
    return times, peaks
