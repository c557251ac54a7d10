"""The ``backfill`` command: one Click command per job, each a thin call into the module
that does the work. What lives here is the command line itself (arguments, their types,
help) and the one way every failure reaches the user: one line and an exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from backfill.config.errors import UserError
from backfill.config.project import find_root, load_project
from backfill.contracts.tables import ContractError
from backfill.db.schema import DecisionDBError
from backfill.files.atomic import DiskFull
from backfill.pipeline import BY_NAME, STAGES, add_train_stage
from backfill.signals import (
    catch_signals,
    ignore_signals,
    release_signals,
    stopped,
    stopped_by_signal,
)


class Backfill(click.Group):
    """The top command: runs the chosen command under the error contract. A setting, a
    path or a full disk is the user's to fix (exit 2); a broken table or DB is the
    data's (exit 1); a signal stops cleanly (128 + its number). Never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order of the work, as defined below

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
            return stopped(exc)
        except Exception as exc:
            code = stopped_by_signal()
            return _failed(exc) if code is None else code


def _failed(exc: Exception) -> int:
    """The error contract: one line for ``exc`` and its exit code; re-raised when it is
    none of the failures a user can act on (a bug shows its traceback)."""
    if isinstance(exc, UserError):
        click.echo(f"backfill: error: {exc}", err=True)
        return 2
    if isinstance(exc, DiskFull):  # the user makes room: their fix, like a setting
        click.echo(f"backfill: error: {exc.strerror}", err=True)
        return 2
    if isinstance(exc, (ContractError, DecisionDBError)):
        click.echo(f"backfill: {exc}", err=True)
        return 1
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`| head`): nothing more to say on stdout, and Python
        # must not try again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        click.echo("backfill: output closed early (by a pipe such as `| head`); "
                   "nothing else was done", err=True)
        return 2
    if isinstance(exc, OSError):  # a disk, permission or path problem: one line
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"backfill: error: {exc.strerror or exc}{where}", err=True)
        return 1
    raise exc


class WholeNumber(click.ParamType):
    """An integer of at least ``least``, said in words when it is not."""

    name = "N"

    def __init__(self, least: int) -> None:
        self.least = least

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = self.least - 1
        if number < self.least:
            self.fail(f"'{value}': use a whole number of {self.least} or more", param, ctx)
        return number


class Formats(click.ParamType):
    """Comma-separated export formats, each one the exporter writes."""

    name = "FORMATS"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        from backfill.reports.export import FORMATS

        if isinstance(value, tuple):
            return value
        chosen = tuple(dict.fromkeys(f.strip().lower() for f in value.split(",") if f.strip()))
        if not chosen or any(f not in FORMATS for f in chosen):
            self.fail(f"'{value}': choose from {','.join(FORMATS)}", param, ctx)
        return chosen


class OutputFolder(click.ParamType):
    """Where a command writes its files, relative to the repository: created if missing;
    a file, or a folder that cannot be written, is refused before any work."""

    name = "FOLDER"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Path:
        out = Path(value).expanduser()
        out = out if out.is_absolute() else find_root() / out
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a folder: choose a folder.")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {out} cannot be created ({exc.strerror or exc}): "
                              "choose a folder you can write.") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise UserError(f"--out {out} cannot be written (permission denied): choose "
                              "a folder you can write.")
        return out


def _say_commit(root: Path, paths: list[Path], message: str) -> None:
    """The git line that commits ``paths``, when some are not committed (nothing outside
    a git repository)."""
    from backfill.projects.git import commit_hint

    hint = commit_hint(root, paths, message)
    if hint:
        click.echo(f"next: {hint}")


def _each_readable(names: tuple[str, ...], describe) -> int:
    """Print ``describe(project)`` for each readable project (projects.select.readable);
    exit code 2 when one was skipped."""
    from backfill.projects.select import readable

    projects, skipped = readable(list(names), find_root())
    for project in projects:
        click.echo(describe(project))
    return 2 if skipped else 0


OVERRIDES = dict(nargs=-1, metavar="[KEY=VALUE]...")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=Backfill, context_settings=CONTEXT)
@click.version_option(package_name="backfill", prog_name="backfill")
def backfill() -> None:
    """Rebuild AI-training decision databases from curated image folders."""


@backfill.command()
@click.option("--keep", "edits", flag_value="keep",
              help="first write the values params.yaml holds that conf/ does not (after "
                   "`dvc exp apply`) into conf/, so that they last")
@click.option("--discard", "edits", flag_value="discard",
              help="put conf/'s values back over those (default: stop and name them)")
def compose(edits: str | None) -> int:
    """Compose conf/ into params.yaml (before `dvc repro`)."""
    from backfill.config.keep import compose_params

    root = find_root()
    out, kept = compose_params(root, edits or "refuse")
    click.echo(f"composed conf/ -> {out.relative_to(root)}; `dvc repro` will build what "
               "changed")
    if kept:
        _say_commit(root, [*kept, out], "Keep experiment settings")
    return 0


@backfill.command()
def watch() -> int:
    """The pipeline's first stage: note which projects' image folders and production
    DBs changed (stats only, every `dvc repro`)."""
    from backfill.watch import run

    click.echo(run(find_root()))
    return 0


@backfill.group()
def project() -> None:
    """Register and list projects."""


@project.command("add")
@click.argument("name")
@click.option("--original-dir", required=True, help="folder of all renders, any depth")
@click.option("--final-dir", required=True, help="folder of the kept (final) images")
@click.option("--real-db", help="the project's production SQLite DB, if any")
@click.option("--legacy-csv", help="its legacy {project}_decisions.csv log, if any")
@click.option("--review-dir", help="folder holding its crop_auto/ and selected/ folders "
                                   "(.decision sidecars), if any")
@click.option("--model", default="baseline", show_default=True,
              help="model version whose predictions are recorded (conf/model/)")
@click.option("--force", is_flag=True, help="replace an existing project config")
@click.argument("overrides", **OVERRIDES)
def project_add(name: str, original_dir: str, final_dir: str, real_db: str | None,
                legacy_csv: str | None, review_dir: str | None, model: str, force: bool,
                overrides: tuple[str, ...]) -> int:
    """Register project NAME (letters, digits, _ and -; not a number or a date) and
    compose params.yaml. KEY=VALUE: pipeline settings stored for it, e.g.
    group.lookahead=25."""
    from backfill.projects.registry import add_project, config_path

    root = find_root()

    def where(value: str | None) -> str | None:
        return config_path(value, root) if value else None

    path = add_project(root, name, where(original_dir), where(final_dir), where(real_db),
                       list(overrides), force, model, where(legacy_csv), where(review_dir))
    click.echo(f"added project '{name}': {path.relative_to(root)}; params.yaml composed.")
    _say_commit(root, [path, root / "conf" / "config.yaml", root / "params.yaml"],
                f"Add project {name}")
    click.echo(f"next: `dvc repro` (or only this project: `dvc repro group@{name}`)")
    return 0


@project.command("list")
def project_list() -> int:
    """List registered projects."""
    return _each_readable((), lambda p: f"{p.name}: original={p.cfg.original_dir} "
                                        f"final={p.cfg.final_dir}")


@project.command("discover")
@click.argument("folder", metavar="ROOT")
@click.option("--yes", is_flag=True,
              help="register the new ones (default: only list what would be added)")
@click.option("--model", default="baseline", show_default=True,
              help="model version of the registered projects (conf/model/)")
@click.argument("overrides", **OVERRIDES)
def project_discover(folder: str, yes: bool, model: str, overrides: tuple[str, ...]) -> int:
    """Find past projects' folder pairs under ROOT (sandbox/<p> + <p>, <p>_raw +
    <p>_final, or <p>). KEY=VALUE: settings stored for every project registered, as for
    `project add`, e.g. embed.pretrained=null."""
    from backfill.models.versions import check_version_name
    from backfill.projects.discover import discover, discovery_table, register
    from backfill.projects.registry import check_overrides

    root = find_root()
    check_version_name(root, model)
    check_overrides(root, list(overrides))  # before the walk: a typo costs no scan
    found = discover(Path(folder), root)
    click.echo(discovery_table(found))
    if not found.new:
        click.echo("nothing new to register.")
        return 0
    if not yes:
        click.echo(f"would register {len(found.new)} project(s) under the names shown: run "
                   "again with --yes to do it.")
        return 0
    added = register(found, root, model, list(overrides))
    names = ", ".join(r.name for r in added)
    click.echo(f"registered {len(added)} project(s): {names}; params.yaml composed.")
    _say_commit(root, [*(root / "conf" / "project" / f"{r.name}.yaml" for r in added),
                       root / "conf" / "config.yaml", root / "params.yaml"],
                f"Add projects {names}")
    click.echo("next: `dvc repro` (or one project: `dvc repro group@NAME`)")
    return 0


def _stage_command(name: str, help: str) -> click.Command:
    def run_stage(project: str) -> int:
        click.echo(BY_NAME[name].run(load_project(project)))
        return 0

    return click.Command(name, callback=run_stage, help=f"Stage: {help} (run by `dvc repro`).",
                         params=[click.Argument(["project"], metavar="NAME")],
                         context_settings=CONTEXT)


for _stage in STAGES:
    backfill.add_command(_stage_command(_stage.name, _stage.help))


@backfill.command()
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="print the plan; write nothing")
def publish(name: str, dry_run: bool) -> int:
    """Apply project NAME's merge plan to its production DB (backup first, one
    transaction)."""
    from backfill.production.publish import run_publish

    click.echo(run_publish(load_project(name), dry_run))
    return 0


@backfill.command()
@click.argument("name")
@click.option("--projects", multiple=True, metavar="NAME...",
              help="projects to learn from (default: all)")
@click.option("--force", is_flag=True, help="replace an existing version")
@click.option("--stage", is_flag=True,
              help="add this training to dvc.yaml as a stage instead of running it")
@click.argument("overrides", **OVERRIDES)
def train(name: str, projects: tuple[str, ...], force: bool, stage: bool,
          overrides: tuple[str, ...]) -> int:
    """Train model version NAME (data/models/NAME/, conf/model/NAME.yaml) from the
    recovered decisions. KEY=VALUE: train settings (conf/train/default.yaml), e.g.
    ranker.epochs=60."""
    from backfill.models.train import describe_training, train_settings
    from backfill.models.train import train as run_training
    from backfill.projects.select import named

    root = find_root()
    cfg = train_settings(root, list(overrides))
    chosen = named(root, projects)
    if stage:
        click.echo(add_train_stage(root, name, [p.name for p in chosen], list(overrides)))
        return 0
    result = run_training(name, chosen, cfg, root, force=force)
    click.echo(describe_training(result, chosen, root))
    return 0


@backfill.command()
@click.argument("versions", nargs=-1, required=True)
@click.option("--projects", multiple=True, metavar="NAME...",
              help="projects to measure on (default: all)")
@click.option("--out", type=OutputFolder(), default="data/compare", show_default=True,
              help="folder for compare.csv and metrics.json")
def compare(versions: tuple[str, ...], projects: tuple[str, ...], out: Path) -> int:
    """Measure model VERSIONS (conf/model/) on projects' decisions."""
    from backfill.models.compare import compare as measure
    from backfill.models.compare import comparison_table, version_from_file, write
    from backfill.projects.select import named

    root = find_root()
    table = measure([version_from_file(root, v) for v in versions], named(root, projects))
    csv, metrics = write(table, out)
    click.echo(comparison_table(table))
    click.echo(f"-> {csv.relative_to(root)} and {metrics.relative_to(root)} "
               f"(`dvc metrics show {metrics.relative_to(root)}`)")
    return 0


@backfill.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "every", is_flag=True,
              help="every registered project, plus combined _all.jsonl/_all.csv")
@click.option("--out", type=OutputFolder(), default="data/export", show_default=True,
              help="folder for the files")
@click.option("--format", "formats", type=Formats(), default="jsonl,csv", show_default=True,
              help="comma-separated: jsonl, csv")
@click.option("--exclude-needs-review", is_flag=True,
              help="leave out decisions flagged needs_review (default: kept, flagged)")
def export(names: tuple[str, ...], every: bool, out: Path, formats: tuple[str, ...],
           exclude_needs_review: bool) -> int:
    """Training pairs from projects' decisions (JSONL and CSV, in the training
    exporter's format)."""
    from backfill.projects.registry import config_path
    from backfill.projects.select import named
    from backfill.reports.export import run

    root = find_root()
    if bool(names) == every:
        raise UserError("name the projects to export, or pass --all (not both).")
    stats, files = run(named(root, names), out, formats, exclude_needs_review, combined=every)
    click.echo(stats)
    click.echo(f"-> {', '.join(config_path(str(f), root) for f in files)}")
    return 0


@backfill.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
def report(names: tuple[str, ...]) -> int:
    """The AI's accuracy per project against your reviewer's picks, and the path of
    each project's HTML report (default: all projects)."""
    from backfill.projects.select import readable
    from backfill.reports.index import write_index
    from backfill.reports.report import performance_summary

    code = _each_readable(names, performance_summary)
    # The index lists every project, even when only some were named; those whose config
    # is broken were named on stderr already, or will be by a plain `backfill report`.
    root = find_root()
    projects = readable([], root, warn=False)[0]
    if projects:
        click.echo(f"index of all projects: {write_index(projects, root)}")
    return code


@backfill.command()
@click.argument("name")
@click.option("--no-browser", is_flag=True, help="print the address only; open no browser")
@click.option("--port", type=WholeNumber(1), metavar="N",
              help="port on 127.0.0.1 to serve on (default: a free one)")
def review(name: str, no_browser: bool, port: int | None) -> int:
    """Settle project NAME's doubtful cases in your browser: decisions to check, finals
    with no group, unreadable finals, name clashes. Each answer is kept at once in
    reviews/NAME.jsonl (commit it with conf/)."""
    from backfill.review.app import serve

    serve(load_project(name, alone=True), port, browser=not no_browser, say=click.echo)
    return 0


@backfill.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--detail", "-v", is_flag=True,
              help="each project in full, stage by stage (scan, group, extract, ...)")
def summary(names: tuple[str, ...], detail: bool) -> int:
    """One-screen table of projects: groups, actions, reviews, errors, rows waiting for
    publish (default: all projects)."""
    from backfill.projects.select import readable
    from backfill.reports.summary import figures, summarize, table

    if detail:
        return _each_readable(names, summarize)
    projects, skipped = readable(list(names), find_root())
    if projects:
        click.echo(table([figures(p) for p in projects]))
    return 2 if skipped else 0


@backfill.command()
@click.argument("name")
@click.argument("sql")
@click.option("--csv", "fmt", flag_value="csv", help="print CSV (every row by default)")
@click.option("--json", "fmt", flag_value="json",
              help="print a JSON array of rows (every row by default)")
@click.option("--limit", type=WholeNumber(0), metavar="N",
              help="rows to print (default: 50 as a table, all as CSV/JSON; 0: all)")
def query(name: str, sql: str, fmt: str | None, limit: int | None) -> int:
    """DuckDB SQL over project NAME's tables and merged DB. Views: its tables (scan,
    groups, truth, ...), decisions and provenance (data/NAME/ai_decisions.db)."""
    import shutil

    from backfill.reports.query import query as run_query

    fmt = fmt or "table"
    out, note = run_query(load_project(name, alone=True), sql, fmt, limit,
                          shutil.get_terminal_size((120, 24)).columns)
    click.echo(out)
    if note:  # on stderr for CSV and JSON, so that stdout stays machine-readable
        click.echo(note, err=fmt != "table")
    return 0


@backfill.group()
def demo() -> None:
    """The generated demo project."""


@demo.command("generate")
@click.option("--out", default="data/demo", show_default=True, help="where to write it")
@click.option("--groups", type=WholeNumber(1), default=40, show_default=True,
              help="number of image groups")
@click.option("--seed", type=int, default=7, show_default=True,
              help="random seed: the same seed writes the same images")
@click.option("--force", is_flag=True, help="regenerate even if present")
def demo_generate(out: str, groups: int, seed: int, force: bool) -> int:
    """Write the demo project's images (once)."""
    from backfill.demo.generate import generate

    click.echo(generate(Path(out), groups, seed, force))
    return 0


def _spread(argv: list[str], option: str) -> list[str]:
    """``--projects a b`` as ``--projects a --projects b``: the list form the README and
    dvc.yaml's train stages use, which Click's options (one value each) do not parse.
    The list ends at the next option or KEY=VALUE word."""
    out, taking = [], False
    for word in argv:
        if word == option:
            taking = True
            continue
        if taking and not word.startswith("-") and "=" not in word:
            out += [option, word]
            continue
        taking = False
        out.append(word)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: this process's); the exit code."""
    argv = _spread(list(sys.argv[1:] if argv is None else argv), "--projects")
    previous = catch_signals()
    try:
        code = backfill.main(args=argv, prog_name="backfill", standalone_mode=False)
    except click.ClickException as exc:  # a usage error: Click's message, exit 2
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.Abort as exc:  # Ctrl-C while the command line was read
        return stopped(exc.__cause__ or KeyboardInterrupt())
    except Exception:
        code = stopped_by_signal()
        if code is None:
            raise
        return code
    finally:
        release_signals(previous)
    return code if isinstance(code, int) else 0


def finish(code: int) -> NoReturn:
    """Exit with ``code``. Once main has returned, the work is done and reported, so a
    Ctrl-C or SIGTERM while Python shuts down (thread pools, torch) is ignored instead
    of turning a finished run into a killed one."""
    ignore_signals()
    sys.exit(code)


def entry() -> None:
    """main, then exit (the console script, ``backfill.entry``, comes here for every
    command but the watch stage)."""
    finish(main())


if __name__ == "__main__":
    entry()
