"""The ``backfill`` command: project set-up, one subcommand per stage, summaries."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from backfill.project import ConfigError, find_root, load_project, write_params
from backfill.tables import ContractError


def _config_path(value: str, root: Path) -> str:
    """A path as the user typed it, stored relative to the root when it lies inside."""
    p = Path(value).expanduser()
    p = p if p.is_absolute() else Path.cwd() / p
    p = Path(os.path.normpath(p))
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def cmd_compose(args: argparse.Namespace) -> int:
    root = find_root()
    out = write_params(root)
    print(f"composed conf/ -> {out.relative_to(root)}; `dvc repro` will build what changed")
    return 0


def cmd_project_add(args: argparse.Namespace) -> int:
    from backfill.registry import add_project

    root = find_root()
    path = add_project(
        root, args.name, _config_path(args.original_dir, root), _config_path(args.final_dir, root),
        _config_path(args.real_db, root) if args.real_db else None, args.overrides, args.force,
    )
    print(f"added project '{args.name}': {path.relative_to(root)}; params.yaml composed.")
    print(f"next: `dvc repro` (or only this project: `dvc repro group@{args.name}`)")
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    from backfill.registry import registered

    root = find_root()
    for name in registered(root):
        project = load_project(name, root)
        print(f"{name}: original={project.cfg.original_dir} final={project.cfg.final_dir}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    import importlib

    stage = importlib.import_module(f"backfill.{args.stage}")
    print(stage.run(load_project(args.name)))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from backfill.registry import registered
    from backfill.summary import summarize

    root = find_root()
    for name in args.names or registered(root):
        print(summarize(load_project(name, root)))
    return 0


def cmd_demo_generate(args: argparse.Namespace) -> int:
    from backfill.synthetic import make_project

    out = Path(args.out)
    if (out / "truth.json").exists() and not args.force:
        print(f"demo project already in {out} (pass --force to regenerate)")
        return 0
    project = make_project(out, n_groups=args.groups, seed=args.seed)
    n_files = sum(len(g.rel_paths) for g in project.groups)
    print(f"generated demo project in {out}: {len(project.groups)} groups, {n_files} renders, "
          f"{len(project.bad_files)} bad files")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backfill",
        description="Rebuild AI-training decision databases from curated image folders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compose", help="compose conf/ into params.yaml (before `dvc repro`)")
    p.set_defaults(func=cmd_compose)

    project = sub.add_parser("project", help="register and list projects")
    psub = project.add_subparsers(dest="project_command", required=True)
    p = psub.add_parser("add", help="register a project and compose params.yaml")
    p.add_argument("name", help="project name (letters, digits, _ and -)")
    p.add_argument("--original-dir", required=True, help="folder of all renders, any depth")
    p.add_argument("--final-dir", required=True, help="folder of the kept (final) images")
    p.add_argument("--real-db", help="the project's production SQLite DB, if any")
    p.add_argument("--force", action="store_true", help="replace an existing project config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="pipeline settings to store for this project, e.g. group.lookahead=25")
    p.set_defaults(func=cmd_project_add)
    p = psub.add_parser("list", help="list registered projects")
    p.set_defaults(func=cmd_project_list)

    for stage, text in [("scan", "find and fingerprint every image"),
                        ("group", "group renders by the nearest-up rule"),
                        ("extract", "recover each group's decision from the final folder")]:
        p = sub.add_parser(stage, help=f"stage: {text} (run by `dvc repro`)")
        p.add_argument("name", help="project name")
        p.set_defaults(func=cmd_stage, stage=stage)

    p = sub.add_parser("summary", help="one-screen summary of projects' tables")
    p.add_argument("names", nargs="*", help="projects (default: all)")
    p.set_defaults(func=cmd_summary)

    demo = sub.add_parser("demo", help="the generated demo project")
    dsub = demo.add_subparsers(dest="demo_command", required=True)
    p = dsub.add_parser("generate", help="write the demo project's images (once)")
    p.add_argument("--out", default="data/demo", help="where to write it")
    p.add_argument("--groups", type=int, default=40, help="number of image groups")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--force", action="store_true", help="regenerate even if present")
    p.set_defaults(func=cmd_demo_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may come before or after the options; argparse alone would
    # reject those that follow an option, so they are collected here.
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) is cmd_project_add:
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return 2
    except ContractError as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("backfill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
