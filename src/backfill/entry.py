"""The ``backfill`` console script. ``backfill watch`` runs on every `dvc repro` and must
cost next to nothing, so it is served here without loading the full command's libraries;
everything else goes to ``backfill.cli``."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["watch"]:
        from backfill.config.composed import find_config_root
        from backfill.watch import run

        root = find_config_root()
        if root is not None:
            try:
                print(run(root))
            except KeyboardInterrupt:
                print("backfill: interrupted", file=sys.stderr)
                sys.exit(130)
            except OSError as exc:  # e.g. data/ read-only or full: one line, as cli says it
                where = f" ({exc.filename})" if exc.filename else ""
                print(f"backfill: error: {exc.strerror or exc}{where}", file=sys.stderr)
                sys.exit(1)
            sys.exit(0)
    from backfill import cli  # `backfill watch` outside a repository: cli says so

    cli.entry()
