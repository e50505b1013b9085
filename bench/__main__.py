"""`python -m bench [scenario ...]`: runs the named scenarios (default: all)."""

from __future__ import annotations

import asyncio
import importlib
import sys

SCENARIOS = ("ceiling", "logins", "decisions", "watch", "scale", "workers")


def main(argv: list[str]) -> int:
    """Runs each scenario module's `run()` coroutine in turn."""
    chosen = argv or list(SCENARIOS)
    for name in chosen:
        if name not in SCENARIOS:
            print(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        asyncio.run(module.run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
