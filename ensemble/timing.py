"""Where inference time goes: wall seconds per named section, for ``infer.py profile=true`` and the GPU check.

Sections nest; each one is charged its exclusive time (a section inside another is subtracted from the outer
one), per thread. With ``sync`` (e.g. ``torch.cuda.synchronize``) the device is synchronised when a section of
the thread that made the timer starts and ends, so asynchronous GPU work is charged to the section that queued
it (other threads, e.g. the writer, never wait for the device); that costs speed, so the end-to-end figure comes
from a run without it. A disabled timer (the default) does nothing.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Timer"]


class Timer:
    """Exclusive wall seconds per section name, from any thread; ``add`` records time measured elsewhere."""

    def __init__(
        self,
        enabled: bool = False,
        sync: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.enabled, self.sync, self.clock = enabled, sync, clock
        self._sync_thread = threading.get_ident()
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._local = threading.local()

    def add(self, name: str, seconds: float) -> None:
        if self.enabled:
            with self._lock:
                self.seconds[name] += seconds

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        stack = self._local.__dict__.setdefault("stack", [])
        sync = self.sync if threading.get_ident() == self._sync_thread else None
        if sync:
            sync()
        start = self.clock()
        stack.append(0.0)  # time spent in sections nested in this one
        try:
            yield
        finally:
            if sync:
                sync()
            elapsed = self.clock() - start
            inner = stack.pop()
            if stack:
                stack[-1] += elapsed
            self.add(name, elapsed - inner)

    def per_item(self, count: int) -> dict[str, float]:
        """Milliseconds per item (e.g. per image) of every section."""
        return {name: 1e3 * s / max(count, 1) for name, s in self.seconds.items()}
