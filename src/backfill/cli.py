"""The ``backfill`` command: project set-up, one subcommand per stage, summaries."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:  # a Ctrl-C while the libraries load is one line too, not a traceback
    from backfill.decisiondb import DecisionDBError
    from backfill.project import ConfigError, find_root, load_project, write_params
    from backfill.tables import ContractError
except KeyboardInterrupt:
    print("backfill: interrupted", file=sys.stderr)
    sys.exit(130)


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
        args.model, _config_path(args.legacy_csv, root) if args.legacy_csv else None,
        _config_path(args.review_dir, root) if args.review_dir else None,
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


def cmd_project_discover(args: argparse.Namespace) -> int:
    from backfill.discover import discover, register, render
    from backfill.registry import model_versions

    root = find_root()
    if args.model not in model_versions(root):
        raise ConfigError(f"no model version '{args.model}' in conf/model/ (known: "
                          f"{', '.join(model_versions(root))}).")
    found = discover(Path(args.root), root)
    print(render(found))
    if not found.new:
        print("nothing new to register.")
    elif not args.yes:
        print(f"would register {len(found.new)} project(s) under the names shown: run again "
              "with --yes to do it.")
    else:
        added = register(found, root, args.model)
        print(f"registered {len(added)} project(s): {', '.join(r.name for r in added)}; "
              "params.yaml composed.")
        print("next: `dvc repro` (or one project: `dvc repro group@NAME`)")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    import importlib

    stage = importlib.import_module(f"backfill.{args.stage}")
    print(stage.run(load_project(args.name)))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from backfill.publish import run_publish

    print(run_publish(load_project(args.name), args.dry_run))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from backfill.registry import registered
    from backfill.report import performance_summary

    root = find_root()
    for name in args.names or registered(root):
        print(performance_summary(load_project(name, root)))
    return 0


def _projects(root: Path, names: list[str] | None) -> list:
    from backfill.registry import registered

    names = names or registered(root)
    if not names:
        raise ConfigError("no projects registered: `backfill project add` first.")
    return [load_project(name, root) for name in names]


def cmd_train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from backfill.project import load_params
    from backfill.train import train

    root = find_root()
    # KEY=VALUE words typed after --projects land there; they are overrides.
    args.overrides += [p for p in args.projects or [] if "=" in p]
    args.projects = [p for p in args.projects or [] if "=" not in p]
    from backfill.settings import SettingError, TrainConfig, typed

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
        return _add_train_stage(root, args, projects)
    result = train(args.name, projects, cfg, root, force=args.force)
    held = result.metadata["held_out"]
    from backfill.evaluate import describe_metrics

    print(f"trained model version '{args.name}' on {', '.join(p.name for p in projects)} "
          f"({result.metadata['training']['groups']} groups, "
          f"{result.metadata['training']['ranker_pairs']} ranker pairs, "
          f"{result.metadata['training']['crop_boxes']} crop boxes)")
    print(f"held out: {describe_metrics(held)}")
    print(f"wrote data/models/{args.name}/ and {result.config_path.relative_to(root)}; "
          f"compare it: `backfill compare baseline {args.name}`")
    return 0


def _add_train_stage(root: Path, args: argparse.Namespace, projects: list) -> int:
    """Register this training as a DVC stage (`dvc stage add`), deps and outs exact."""
    import shlex
    import subprocess

    code = [f"src/backfill/{m}.py" for m in ("train", "models", "predict", "evaluate")]
    deps = code + [f"data/{p.name}/{t}.parquet" for p in projects
                   for t in ("truth", "groups", "embeddings")]
    cmd = ["backfill", "train", args.name, "--force", "--projects",
           *[p.name for p in projects], *args.overrides]
    dvc = ["dvc", "stage", "add", "--force", "-n", f"train-{args.name}",
           *[a for d in deps for a in ("-d", d)],
           "-p", "train", "-o", f"data/models/{args.name}",
           "-O", f"conf/model/{args.name}.yaml", shlex.join(cmd)]
    proc = subprocess.run(dvc, cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise ConfigError(f"dvc stage add failed: {proc.stderr.strip() or proc.stdout.strip()}")
    print(f"added stage train-{args.name} to dvc.yaml: `dvc repro train-{args.name}` trains "
          "it, and re-trains when its data or the train settings change.")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from backfill.compare import compare, render, version_from_file, write

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
    from backfill.export import FORMATS

    chosen = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    if not chosen or any(f not in FORMATS for f in chosen):
        raise argparse.ArgumentTypeError(f"'{text}': choose from {','.join(FORMATS)}")
    return chosen


def cmd_export(args: argparse.Namespace) -> int:
    from backfill.export import run

    root = find_root()
    if bool(args.names) == args.all:
        raise ConfigError("name the projects to export, or pass --all (not both).")
    out = _output_folder(args.out, "data/export", root)
    stats, files = run(_projects(root, args.names), out, args.format, args.exclude_needs_review,
                       combined=args.all)
    print(stats)
    print(f"-> {', '.join(_config_path(str(f), root) for f in files)}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from backfill.registry import registered
    from backfill.summary import summarize

    root = find_root()
    for name in args.names or registered(root):
        print(summarize(load_project(name, root)))
    return 0


DEMO_MARK = ".backfill-demo"  # written first into every folder the demo generates


def _is_demo(out: Path) -> bool:
    """A folder this command made: only its mark says so (a real project can hold
    original/ and final/ too)."""
    return (out / DEMO_MARK).is_file()


def cmd_demo_generate(args: argparse.Namespace) -> int:
    from backfill.synthetic import make_project
    from backfill.synthetic_production import make_production_db

    out = Path(args.out)
    live = out / "live" / "ai_decisions.db"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: choose a new or empty folder.")
    if out.is_dir() and any(out.iterdir()) and not _is_demo(out):
        raise ConfigError(f"--out {out} is not empty and holds no demo made by backfill "
                          f"(no {DEMO_MARK}): nothing was deleted. Choose a new or empty "
                          "folder.")
    if (out / "truth.json").exists() and live.exists() and not args.force:
        print(f"demo project already in {out} (pass --force to regenerate)")
        return 0
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("made by `backfill demo generate`; safe to regenerate\n")
    for folder in ("original", "final", "live"):  # ours (checked above): no stale files
        shutil.rmtree(out / folder, ignore_errors=True)
    project = make_project(out, n_groups=args.groups, seed=args.seed)
    logged = make_production_db(project, live, seed=args.seed)
    n_files = sum(len(g.rel_paths) for g in project.groups)
    print(f"generated demo project in {out}: {len(project.groups)} groups, {n_files} renders, "
          f"{len(project.bad_files)} bad files; a partial production DB of {len(logged.rows)} "
          f"rows in {live} (as the reviewer would have logged them)")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import shutil

    from backfill.query import query

    fmt = "csv" if args.csv else "json" if args.json else "table"
    out, note = query(load_project(args.name), args.sql, fmt, args.limit,
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
    p.set_defaults(func=cmd_compose)

    project = sub.add_parser("project", help="register and list projects")
    psub = project.add_subparsers(dest="project_command", required=True)
    p = psub.add_parser("add", help="register a project and compose params.yaml")
    p.add_argument("name", help="project name (letters, digits, _ and -)")
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
    p.set_defaults(func=cmd_project_discover)

    for stage, text in [("scan", "find and fingerprint every image"),
                        ("group", "group renders by the nearest-up rule"),
                        ("extract", "recover each group's decision from the final folder"),
                        ("embed", "CLIP embeddings of every grouped image (cached)"),
                        ("predict", "the model version's picks and crops, and its accuracy"),
                        ("merge", "plan the merge into the production DB; write the merged DB"),
                        ("validate", "check every table and the DB; metrics, plots, report")]:
        p = sub.add_parser(stage, help=f"stage: {text} (run by `dvc repro`)")
        p.add_argument("name", help="project name")
        p.set_defaults(func=cmd_stage, stage=stage)

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

    p = sub.add_parser("summary", help="one-screen summary of projects' tables")
    p.add_argument("names", nargs="*", help="projects (default: all)")
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
    if extra and getattr(args, "func", None) in (cmd_project_add, cmd_train):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return 2
    except (ContractError, DecisionDBError) as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("backfill: interrupted", file=sys.stderr)
        return 130
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


if __name__ == "__main__":
    sys.exit(main())
