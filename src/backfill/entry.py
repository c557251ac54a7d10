"""The ``backfill`` console script. ``backfill watch`` runs on every `dvc repro` and must
cost next to nothing, so it is served here without loading the full command's libraries;
everything else goes to ``backfill.cli``. Ctrl-C and SIGTERM are caught from the first
line, so that a signal while the libraries load is one line and its exit code too."""

from __future__ import annotations

import sys

from backfill.signals import catch_signals, release_signals, stopped, stopped_by_signal


def _watch() -> int | None:
    """`backfill watch` inside a repository, or None (cli handles the rest and says so)."""
    from backfill.config.composed import find_config_root
    from backfill.watch import run

    root = find_config_root()
    if root is None:
        return None
    try:
        print(run(root))
    except OSError as exc:  # e.g. data/ read-only or full: one line, as cli says it
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"backfill: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    previous = catch_signals()
    try:
        code = _watch() if sys.argv[1:] == ["watch"] else None
        if code is None:
            from backfill import cli
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
        sys.exit(stopped(exc))
    except Exception:
        # A signal while a module loads can come out as another error (a class half
        # built is a RuntimeError): the signal is still what stopped it.
        code = stopped_by_signal()
        if code is None:
            raise
        sys.exit(code)
    finally:
        release_signals(previous)
    if code is not None:
        sys.exit(code)
    cli.entry()
