"""`python -m bench [scenario ...]`: runs the named scenarios (default: all)."""

from __future__ import annotations

import asyncio
import importlib
import sys

SCENARIOS = ("ceiling", "logins", "decisions", "watch", "scale", "workers")


def main(argv: list[str]) -> int:
    """Runs each scenario module's `run()` coroutine in turn, all on one event loop."""
    chosen = argv or list(SCENARIOS)
    for name in chosen:
        if name not in SCENARIOS:
            print(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
    # One loop for every scenario: grpc.aio's completion queue stays bound to the loop it
    # first ran on, and a loop per scenario left it calling into closed ones.
    asyncio.run(_run_all(chosen))
    return 0


async def _run_all(chosen: list[str]) -> None:
    for name in chosen:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        await module.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
