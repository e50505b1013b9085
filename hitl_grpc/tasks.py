"""Background tasks: periodic ones, and stopping any so that one swallowed cancellation
cannot hang shutdown."""

from __future__ import annotations

import abc
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


class Periodic(abc.ABC):
    """Runs step() in a background task every `interval_s`, from start() until stop().

    Steps start at a fixed rate; one that overruns its interval delays the next to its
    end instead of piling up. A step that fails is logged and the next runs on time.
    """

    def __init__(self, *, name: str, interval_s: float) -> None:
        self.name = name
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def step(self) -> None:
        """One run of the periodic work."""

    def start(self) -> None:
        """Starts stepping in the background; the first step runs at once."""
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stops stepping, within STOP_WITHIN_S; a step in progress is cancelled."""
        task, self._task = self._task, None
        if task is not None:
            await stop(task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("%s failed; next run in %.1f s", self.name, self.interval_s)
            due = max(due + self.interval_s, loop.time())
            await asyncio.sleep(due - loop.time())
