"""data/index.html: every project's summary figures on one page, each linking to its own
report (``backfill report``). Self-contained (no scripts, no files beside it), so it
opens from a copied folder as well as from the repository."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from backfill.config.project import Project
from backfill.files.atomic import write_text
from backfill.reports.summary import HEADERS, Figures, cells, figures

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}th,td{padding:.3em .8em;border-bottom:1px solid #ddd}
th{text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#777}"""


def report_link(project: Project, index: Path) -> str | None:
    """The project's report.html relative to the index page, where it exists."""
    report = project.report
    if not report.is_file():
        return None
    return Path(os.path.relpath(report, index.parent)).as_posix()


def _row(f: Figures, link: str | None) -> str:
    name = escape(f.name)
    if link:  # quote=True: the path goes into an attribute
        name = f'<a href="{escape(link, quote=True)}">{name}</a>'
    elif f.built:
        name += " <span class=note>(no report yet)</span>"
    if not f.built:
        return (f"<tr><td>{name}</td><td class=note colspan={len(HEADERS) - 1}>"
                "not built yet: run <code>dvc repro</code></td></tr>")
    # The same figures as the terminal table, so the two never disagree.
    figures_ = "".join(f"<td class=n>{escape(c)}</td>" for c in cells(f)[1:])
    return f"<tr><td>{name}</td>{figures_}</tr>"


def index_html(rows: list[tuple[Figures, str | None]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
    body = "\n".join(_row(f, link) for f, link in rows)
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>backfill: all projects</title><style>{STYLE}</style></head><body>\n"
            f"<h1>All projects</h1>\n<table>\n<tr>{head}</tr>\n{body}\n</table>\n"
            "<p>Each name links to that project's report, where it has one. Refresh this "
            "page with <code>backfill report</code>.</p>\n</body></html>\n")


def write_index(projects: list[Project], root: Path) -> Path:
    """Write data/index.html for ``projects``; returns its path."""
    index = root / "data" / "index.html"
    index.parent.mkdir(parents=True, exist_ok=True)
    write_text(index_html([(figures(p), report_link(p, index)) for p in projects]), index)
    return index
