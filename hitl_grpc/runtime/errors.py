"""Why a server or a database-direct command could not start; light to import, so a CLI
command can catch it without loading the server."""

from __future__ import annotations


class StartupError(Exception):
    """The server cannot start; the message says why, in one line."""
