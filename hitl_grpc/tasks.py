"""Stopping background tasks so that one swallowed cancellation cannot hang shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

log = logging.getLogger("hitl_grpc.tasks")

# Each background task gets this long to end once cancelled; shutdown adds them up.
STOP_WITHIN_S: Final = 2.0
# A task that swallowed a cancel (asyncio.wait_for on Python 3.11 can) is cancelled again,
# but only after half the bound: one that is still cleaning up (closing a connection)
# must not have its cleanup cut short by the second cancel.
_RECANCEL_S: Final = 0.05


async def stop(task: asyncio.Task[Any], *, within_s: float = STOP_WITHIN_S) -> bool:
    """Cancels `task` until it has ended, for at most `within_s`; False if it would not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    task.cancel()
    await asyncio.wait({task}, timeout=within_s / 2)
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.error(
                "task %s ignored cancellation for %.1f s; left behind", task.get_name(), within_s
            )
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(remaining, _RECANCEL_S))
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
    return True
