"""The ``backfill`` command: project set-up, one subcommand per stage, summaries."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn


class Terminated(KeyboardInterrupt):
    """A SIGTERM (`kill`, a job scheduler, a container stopping): stopped the way Ctrl-C
    stops, through the same clean-up, with its own line and exit code."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _catch_sigterm() -> object:
    """Turn SIGTERM into Terminated; returns the handler to put back (None off the main
    thread, where Python cannot set one)."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        return None


def _release_sigterm(previous: object) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _stopped(exc: KeyboardInterrupt) -> int:
    """The one line and the exit code of a run stopped by a signal (128 + its number)."""
    if isinstance(exc, Terminated):
        print("backfill: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("backfill: interrupted", file=sys.stderr)
    return 128 + signal.SIGINT


_previous = _catch_sigterm()
try:  # a Ctrl-C or SIGTERM while the libraries load is one line too, not a traceback
    from backfill.config.errors import ConfigError
    from backfill.config.project import check_params_fresh, find_root, load_project, write_params
    from backfill.contracts.tables import ContractError
    from backfill.db.schema import DecisionDBError
    from backfill.files.atomic import DiskFull
    from backfill.pipeline import BY_NAME, STAGES, add_train_stage
except KeyboardInterrupt as _exc:
    sys.exit(_stopped(_exc))
finally:
    _release_sigterm(_previous)


def _say_commit(root: Path, paths: list[Path], message: str) -> None:
    """The git line that commits ``paths``, when some are not committed (nothing outside
    a git repository)."""
    from backfill.projects.git import commit_hint

    hint = commit_hint(root, paths, message)
    if hint:
        print(f"next: {hint}")


def cmd_compose(args: argparse.Namespace) -> int:
    root = find_root()
    edits = "keep" if args.keep else "discard" if args.discard else "refuse"
    conf = {p: p.read_bytes() for p in (root / "conf").rglob("*.yaml")}
    from backfill.config.keep import keep_values

    out = write_params(root, edits=edits, keeper=keep_values)
    print(f"composed conf/ -> {out.relative_to(root)}; `dvc repro` will build what changed")
    kept = [p for p, text in conf.items() if not p.is_file() or p.read_bytes() != text]
    if kept:
        _say_commit(root, [*sorted(kept), out], "Keep experiment settings")
    return 0


def cmd_project_add(args: argparse.Namespace) -> int:
    from backfill.projects.registry import add_project, config_path

    root = find_root()
    path = add_project(
        root, args.name, config_path(args.original_dir, root), config_path(args.final_dir, root),
        config_path(args.real_db, root) if args.real_db else None, args.overrides, args.force,
        args.model, config_path(args.legacy_csv, root) if args.legacy_csv else None,
        config_path(args.review_dir, root) if args.review_dir else None,
    )
    print(f"added project '{args.name}': {path.relative_to(root)}; params.yaml composed.")
    _say_commit(root, [path, root / "conf" / "config.yaml", root / "params.yaml"],
                f"Add project {args.name}")
    print(f"next: `dvc repro` (or only this project: `dvc repro group@{args.name}`)")
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    return _each_readable([], lambda project: f"{project.name}: original="
                          f"{project.cfg.original_dir} final={project.cfg.final_dir}")


def cmd_project_discover(args: argparse.Namespace) -> int:
    from backfill.models.versions import check_version_name
    from backfill.projects.discover import discover, register, render
    from backfill.projects.registry import check_overrides

    root = find_root()
    check_version_name(root, args.model)
    check_overrides(root, args.overrides)  # before the walk: a typo costs no scan
    found = discover(Path(args.root), root)
    print(render(found))
    if not found.new:
        print("nothing new to register.")
    elif not args.yes:
        print(f"would register {len(found.new)} project(s) under the names shown: run again "
              "with --yes to do it.")
    else:
        added = register(found, root, args.model, args.overrides)
        print(f"registered {len(added)} project(s): {', '.join(r.name for r in added)}; "
              "params.yaml composed.")
        _say_commit(root, [*(root / "conf" / "project" / f"{r.name}.yaml" for r in added),
                           root / "conf" / "config.yaml", root / "params.yaml"],
                    f"Add projects {', '.join(r.name for r in added)}")
        print("next: `dvc repro` (or one project: `dvc repro group@NAME`)")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    print(BY_NAME[args.stage].run(load_project(args.name)))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from backfill.production.publish import run_publish

    print(run_publish(load_project(args.name), args.dry_run))
    return 0


def _readable(names: list[str], root: Path, warn: bool = True) -> tuple[list, int]:
    """The projects named (all registered: none named), each judged on its own config: a
    project whose config is broken is one line on stderr (unless not ``warn``) and the
    others are still returned, with the number skipped. One project named: its error is
    the error."""
    from backfill.projects.registry import registered

    names = names or registered(root)
    if len(names) == 1:
        return [load_project(names[0], root, alone=True)], 0
    try:  # the common case, one composition for all (or none: conf/ did not change)
        check_params_fresh(root)
        alone = False
    except ConfigError:
        alone = True
    projects, skipped = [], 0
    for name in names:
        try:
            projects.append(load_project(name, root, alone=alone))
        except ConfigError as exc:
            if warn:
                print(f"backfill: warning: project '{name}' skipped: {exc}", file=sys.stderr)
            skipped += 1
    return projects, skipped


def _each_readable(names: list[str], describe) -> int:
    """Print ``describe(project)`` for each readable project (see _readable). Exit code 2
    when one was skipped."""
    projects, skipped = _readable(names, find_root())
    for project in projects:
        print(describe(project))
    return 2 if skipped else 0


def cmd_report(args: argparse.Namespace) -> int:
    from backfill.reports.index import write_index
    from backfill.reports.report import performance_summary

    root = find_root()
    code = _each_readable(args.names, performance_summary)
    # The index lists every project, even when only some were named; those whose config
    # is broken were named on stderr already, or will be by a plain `backfill report`.
    projects = _readable([], root, warn=False)[0]
    if projects:
        index = write_index(projects, root)
        print(f"index of all projects: {index}")
    return code


def _projects(root: Path, names: list[str] | None) -> list:
    from backfill.projects.registry import registered

    names = names or registered(root)
    if not names:
        raise ConfigError("no projects registered: `backfill project add` first.")
    return [load_project(name, root) for name in names]


def cmd_train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from backfill.config.project import load_params
    from backfill.models.train import train

    root = find_root()
    # KEY=VALUE words typed after --projects land there; they are overrides.
    args.overrides += [p for p in args.projects or [] if "=" in p]
    args.projects = [p for p in args.projects or [] if "=" not in p]
    from backfill.config.settings import SettingError, TrainConfig, typed

    cfg = load_params(root).get("train")
    if cfg is None:
        raise ConfigError("params.yaml has no train section: run `backfill compose`.")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ConfigError(f"train overrides look like KEY=VALUE, e.g. ranker.epochs=60: {bad}")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.overrides))
        typed(TrainConfig, cfg, prefix="train.")  # types, ranges, unknown keys
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:
        raise ConfigError(f"bad train override {args.overrides}: {exc}") from None
    projects = _projects(root, args.projects)
    if args.stage:
        print(add_train_stage(root, args.name, [p.name for p in projects], args.overrides))
        return 0
    result = train(args.name, projects, cfg, root, force=args.force)
    held = result.metadata["held_out"]
    from backfill.models.evaluate import describe_metrics

    print(f"trained model version '{args.name}' on {', '.join(p.name for p in projects)} "
          f"({result.metadata['training']['groups']} groups, "
          f"{result.metadata['training']['ranker_pairs']} ranker pairs, "
          f"{result.metadata['training']['crop_boxes']} crop boxes)")
    print(f"held out: {describe_metrics(held)}")
    print(f"wrote data/models/{args.name}/ and {result.config_path.relative_to(root)}; "
          f"compare it: `backfill compare baseline {args.name}`")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from backfill.models.compare import compare, render, version_from_file, write

    root = find_root()
    versions = [version_from_file(root, v) for v in args.versions]
    out = _output_folder(args.out, "data/compare", root)
    table = compare(versions, _projects(root, args.projects))
    csv, metrics = write(table, out)
    print(render(table))
    print(f"-> {csv.relative_to(root)} and {metrics.relative_to(root)} "
          f"(`dvc metrics show {metrics.relative_to(root)}`)")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}': use a whole number of 1 or more")
    return value


def _output_folder(value: str | None, default: str, root: Path) -> Path:
    """Where a command writes its files: created if missing; a file, or a folder that
    cannot be written, is refused before any work, naming the path."""
    out = Path(value).expanduser() if value else Path(default)
    out = out if out.is_absolute() else root / out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be created ({exc.strerror or exc}): choose "
                          "a folder you can write.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written (permission denied): choose a "
                          "folder you can write.")
    return out


def _formats(text: str) -> tuple[str, ...]:
    from backfill.reports.export import FORMATS

    chosen = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    if not chosen or any(f not in FORMATS for f in chosen):
        raise argparse.ArgumentTypeError(f"'{text}': choose from {','.join(FORMATS)}")
    return chosen


def cmd_export(args: argparse.Namespace) -> int:
    from backfill.projects.registry import config_path
    from backfill.reports.export import run

    root = find_root()
    if bool(args.names) == args.all:
        raise ConfigError("name the projects to export, or pass --all (not both).")
    out = _output_folder(args.out, "data/export", root)
    stats, files = run(_projects(root, args.names), out, args.format, args.exclude_needs_review,
                       combined=args.all)
    print(stats)
    print(f"-> {', '.join(config_path(str(f), root) for f in files)}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from backfill.watch import run

    print(run(find_root()))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from backfill.reports.summary import figures, summarize, table

    if args.detail:
        return _each_readable(args.names, summarize)
    projects, skipped = _readable(args.names, find_root())
    if projects:
        print(table([figures(p) for p in projects]))
    return 2 if skipped else 0


def cmd_demo_generate(args: argparse.Namespace) -> int:
    from backfill.demo.generate import generate

    print(generate(Path(args.out), args.groups, args.seed, args.force))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import shutil

    from backfill.reports.query import query

    fmt = "csv" if args.csv else "json" if args.json else "table"
    out, note = query(load_project(args.name, alone=True), args.sql, fmt, args.limit,
                      shutil.get_terminal_size((120, 24)).columns)
    print(out)
    if note:  # on stderr for CSV and JSON, so that stdout stays machine-readable
        print(note, file=sys.stdout if fmt == "table" else sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backfill",
        description="Rebuild AI-training decision databases from curated image folders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compose", help="compose conf/ into params.yaml (before `dvc repro`)")
    edits = p.add_mutually_exclusive_group()
    edits.add_argument("--keep", action="store_true",
                       help="first write the values params.yaml holds that conf/ does not "
                            "(after `dvc exp apply`) into conf/, so that they last")
    edits.add_argument("--discard", action="store_true",
                       help="put conf/'s values back over those (default: stop and name them)")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("watch", help="the pipeline's first stage: note which projects' image "
                       "folders and production DBs changed (stats only, every `dvc repro`)")
    p.set_defaults(func=cmd_watch)

    project = sub.add_parser("project", help="register and list projects")
    psub = project.add_subparsers(dest="project_command", required=True)
    p = psub.add_parser("add", help="register a project and compose params.yaml")
    p.add_argument("name", help="project name: letters, digits, _ and -; not a number or "
                                "a date, and not another project's name in other case")
    p.add_argument("--original-dir", required=True, help="folder of all renders, any depth")
    p.add_argument("--final-dir", required=True, help="folder of the kept (final) images")
    p.add_argument("--real-db", help="the project's production SQLite DB, if any")
    p.add_argument("--legacy-csv", help="its legacy {project}_decisions.csv log, if any")
    p.add_argument("--review-dir", help="folder holding its crop_auto/ and selected/ "
                                        "folders (.decision sidecars), if any")
    p.add_argument("--model", default="baseline",
                   help="model version whose predictions are recorded (conf/model/)")
    p.add_argument("--force", action="store_true", help="replace an existing project config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="pipeline settings to store for this project, e.g. group.lookahead=25")
    p.set_defaults(func=cmd_project_add)
    p = psub.add_parser("list", help="list registered projects")
    p.set_defaults(func=cmd_project_list)
    p = psub.add_parser("discover", help="find past projects' folder pairs under ROOT "
                                         "(sandbox/<p> + <p>, <p>_raw + <p>_final or <p>)")
    p.add_argument("root", help="folder holding past projects")
    p.add_argument("--yes", action="store_true",
                   help="register the new ones (default: only list what would be added)")
    p.add_argument("--model", default="baseline",
                   help="model version of the registered projects (conf/model/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="pipeline settings to store for every project registered, as for "
                        "`project add`, e.g. embed.pretrained=null")
    p.set_defaults(func=cmd_project_discover)

    for stage in STAGES:
        p = sub.add_parser(stage.name, help=f"stage: {stage.help} (run by `dvc repro`)")
        p.add_argument("name", help="project name")
        p.set_defaults(func=cmd_stage, stage=stage.name)

    p = sub.add_parser("publish", help="apply the merge plan to the production DB "
                                       "(backup first, one transaction)")
    p.add_argument("name", help="project name")
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("train", help="train a new model version from recovered decisions")
    p.add_argument("name", help="version name: writes data/models/NAME/, conf/model/NAME.yaml")
    p.add_argument("--projects", nargs="+", metavar="NAME", help="(default: all)")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    p.add_argument("--stage", action="store_true",
                   help="add this training to dvc.yaml as a stage instead of running it")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="train settings (conf/train/default.yaml), e.g. ranker.epochs=60")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="measure model versions on projects' decisions")
    p.add_argument("versions", nargs="+", help="model versions (conf/model/)")
    p.add_argument("--projects", nargs="+", metavar="NAME", help="(default: all)")
    p.add_argument("--out", help="folder for compare.csv and metrics.json "
                                 "(default: data/compare)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="training pairs from projects' decisions "
                                      "(JSONL and CSV, seed 002's format)")
    p.add_argument("names", nargs="*", metavar="NAME", help="projects to export")
    p.add_argument("--all", action="store_true",
                   help="every registered project, plus combined _all.jsonl/_all.csv")
    p.add_argument("--out", help="folder for the files (default: data/export)")
    p.add_argument("--format", type=_formats, default=("jsonl", "csv"),
                   help="comma-separated: jsonl, csv (default: jsonl,csv)")
    p.add_argument("--exclude-needs-review", action="store_true",
                   help="leave out decisions flagged needs_review (default: kept, flagged)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="the AI's accuracy per project (seed 003) and the "
                                      "path of its HTML report")
    p.add_argument("names", nargs="*", help="projects (default: all)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary", help="one-screen table of projects: groups, actions, "
                                       "reviews, errors, rows waiting for publish")
    p.add_argument("names", nargs="*", help="projects (default: all)")
    p.add_argument("--detail", "-v", action="store_true",
                   help="each project in full, stage by stage (scan, group, extract, ...)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("query", help="DuckDB SQL over a project's tables and merged DB")
    p.add_argument("name", help="project name")
    p.add_argument("sql", help="one query; views: its tables (scan, groups, truth, ...), "
                               "decisions and provenance (data/NAME/ai_decisions.db)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--csv", action="store_true", help="print CSV (every row by default)")
    form.add_argument("--json", action="store_true",
                      help="print a JSON array of rows (every row by default)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="rows to print (default: 50 as a table, all as CSV/JSON; 0: all)")
    p.set_defaults(func=cmd_query)

    demo = sub.add_parser("demo", help="the generated demo project")
    dsub = demo.add_subparsers(dest="demo_command", required=True)
    p = dsub.add_parser("generate", help="write the demo project's images (once)")
    p.add_argument("--out", default="data/demo", help="where to write it")
    p.add_argument("--groups", type=_positive, default=40, help="number of image groups")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--force", action="store_true", help="regenerate even if present")
    p.set_defaults(func=cmd_demo_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may come before or after the options; argparse alone would
    # reject those that follow an option, so they are collected here.
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) in (cmd_project_add, cmd_project_discover,
                                                 cmd_train):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    previous = _catch_sigterm()
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return 2
    except DiskFull as exc:  # the user makes room: their fix, like a setting
        print(f"backfill: error: {exc.strerror}", file=sys.stderr)
        return 2
    except (ContractError, DecisionDBError) as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
        return _stopped(exc)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say on stdout, and Python
        # must not try again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("backfill: output closed early (by a pipe such as `| head`); nothing else "
              "was done", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk, permission or path problem: one line, not a trace
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"backfill: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    finally:
        _release_sigterm(previous)


def finish(code: int) -> NoReturn:
    """Exit with ``code``. Once main has returned, the work is done and reported, so a
    Ctrl-C or SIGTERM while Python shuts down (thread pools, torch) is ignored instead
    of turning a finished run into a killed one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


def entry() -> None:
    """main, then exit (the console script, ``backfill.entry``, comes here for every
    command but the watch stage)."""
    finish(main())


if __name__ == "__main__":
    entry()
