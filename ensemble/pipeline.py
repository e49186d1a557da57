"""Hand the CPU-side tail of inference (RLE, CSV, score, store) to one background thread, in order.

The loop that feeds the device then goes on to the next batch while the previous images are encoded and
written: the GPU is not kept waiting for Python string work. The queue is bounded, so memory stays flat
whatever the number of images; an error in the thread stops the loop and is raised in the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["drain_in_background"]

_DONE = object()


def drain_in_background(items: Iterable[Any], handle: Callable[[Any], None], depth: int = 64) -> int:
    """Call ``handle(item)`` for every item, in order, on one background thread; return the item count.

    Returns when every item is handled. An exception in ``handle`` is re-raised here (the remaining items
    are not handled); an exception while producing items (e.g. SystemExit on SIGTERM) stops the thread first.
    """
    pending: queue.Queue = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []

    def work() -> None:
        while (item := pending.get()) is not _DONE:
            if not failure:
                try:
                    handle(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    failure.append(exc)

    thread = threading.Thread(target=work, name="steelseg-writer", daemon=True)
    thread.start()
    count = 0
    try:
        for item in items:
            if failure:
                break
            pending.put(item)
            count += 1
    finally:
        pending.put(_DONE)
        thread.join()
    if failure:
        raise failure[0]
    return count
