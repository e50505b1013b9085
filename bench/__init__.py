"""Load scenarios, each measured beside a no-op ceiling in the same run."""
