"""Stopping by signal: Ctrl-C (SIGINT) and SIGTERM (`kill`, a job scheduler, a container
stopping) both stop a command through the same clean-up, each with its own one line and
exit code. Standard library only: the console script installs this before anything
heavy is imported, so that a signal while libraries load is one line too.

Python does not always let the KeyboardInterrupt through: one raised while a class is
built comes out as a RuntimeError, and a library's ``except Exception`` may go on with a
half-built object and fail on it later, and one raised inside a callback is printed and
dropped. So each signal is also recorded as it arrives: whatever a command fails with
after a signal, the signal is what stopped it, and a dropped one is delivered again."""

from __future__ import annotations

import _thread
import os
import signal
import sys
import time
from typing import Any, NamedTuple


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt."""


_received: list[KeyboardInterrupt] = []


def _on_signal(signum: int, frame: object) -> None:
    stop = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    _received.append(stop)
    raise stop


def _swallowed(hook: Any) -> Any:
    """An unraisablehook over ``hook``: where Python cannot raise (a callback such as the
    import system's lock clean-up), it prints the signal's exception as "Exception
    ignored" and goes on. Deliver the signal once more instead, so that it stops the
    command where it can; anything else goes to ``hook``."""
    def unraisable(report: Any) -> None:
        if any(report.exc_value is stop for stop in _received):
            sig = signal.SIGTERM if isinstance(report.exc_value, Terminated) else signal.SIGINT
            # From another thread, a moment later: raised here, in the hook, it would be
            # dropped again.
            _thread.start_new_thread(_send_later, (sig,))
            return
        hook(report)
    return unraisable


def _send_later(sig: int) -> None:
    time.sleep(0.05)
    os.kill(os.getpid(), sig)


class Caught(NamedTuple):
    """What catch_signals replaced, for release_signals to put back."""

    handlers: dict[int, Any]
    hook: Any


def catch_signals() -> Caught | None:
    """Raise Ctrl-C and SIGTERM where the program is, and record them; returns what to
    put back (None off the main thread, where Python cannot set a handler). A command
    starts with no signal recorded."""
    _received.clear()
    try:
        handlers = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        return None
    hook = sys.unraisablehook
    sys.unraisablehook = _swallowed(hook)
    return Caught(handlers, hook)


def release_signals(previous: Caught | None) -> None:
    if previous is None:
        return
    for sig, handler in previous.handlers.items():
        signal.signal(sig, handler)
    sys.unraisablehook = previous.hook


def stopped_by_signal() -> int | None:
    """After a command failed: if a signal came since it started, say so in one line and
    return its exit code (whatever the command then failed with, the signal stopped
    it); None when none came."""
    return stopped(_received[0]) if _received else None


def stopped(exc: BaseException) -> int:
    """Say why the run stopped, in one line; its exit code (128 + the signal's number)."""
    if isinstance(exc, Terminated):
        print("backfill: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("backfill: interrupted", file=sys.stderr)
    return 128 + signal.SIGINT


def ignore_signals() -> None:
    """Once the work is done and reported: a Ctrl-C or SIGTERM while Python shuts down
    (thread pools, torch) must not turn a finished run into a killed one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
