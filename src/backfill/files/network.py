"""Whether a host answers: one short TCP connect, so a command fails in seconds, saying
why, where a library would retry for minutes."""

from __future__ import annotations

import socket


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` accepts no connection within ``timeout`` seconds, or None when
    it does."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None
