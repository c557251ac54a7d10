"""Stopping by signal: Ctrl-C (SIGINT) and SIGTERM (`kill`, a job scheduler, a container
stopping) both stop a command through the same clean-up, each with its own one line and
exit code. Standard library only: the console script installs this before anything
heavy is imported, so that a signal while libraries load is one line too."""

from __future__ import annotations

import signal
import sys


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def catch_sigterm() -> object:
    """Turn SIGTERM into Terminated; returns the handler to put back (None off the main
    thread, where Python cannot set one)."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        return None


def release_sigterm(previous: object) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


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
