"""validate: contracts and the backfill guide's checks stop the stage with a readable message;
metrics, plot data and an HTML report that renders in headless Chromium."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import threading
from html.parser import HTMLParser

import pandas as pd
import pytest

from backfill.config.settings import section
from backfill.contracts.schemas import BOX, CROP_BOX
from backfill.contracts.tables import ContractError
from backfill.demo.production import make_production_db
from backfill.files.atomic import write_parquet
from backfill.models.evaluate import evaluate
from tests.helpers.browser import chromium
from tests.helpers.stage_project import make_stage_project


@pytest.fixture
def validated(tmp_path, recovered):
    from backfill.config.settings import GroupConfig
    from backfill.stages.merge import run as merge
    from backfill.stages.validate import run as validate

    live = make_production_db(recovered.gen, tmp_path / "live.db", seed=5)
    project = make_stage_project(tmp_path, recovered, real_db=live.path)
    # Upstream tables the merge does not need but validate checks.
    from backfill.stages.extract.stage import ExtractSettings, extract_project
    from backfill.stages.group import group_table

    cfg = recovered.cfg
    groups, ungrouped = group_table(recovered.scan, section(GroupConfig, cfg.group, "group"), "p")
    finals = extract_project(groups, recovered.scan, ungrouped,
                             ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels),
                             recovered.gen.original_dir,
                             recovered.gen.final_dir, tmp_path / "cache").finals
    write_parquet(ungrouped, project.output("ungrouped"))
    write_parquet(finals, project.output("finals"))
    write_parquet(pd.DataFrame({"content_hash": pd.Series(dtype="str"),
                                "embedding": pd.Series(dtype=object),
                                "model_id": pd.Series(dtype="str")}),
                  project.output("embeddings"))
    merge(project)
    return project, validate


def test_validate_writes_metrics_plots_and_a_report(validated, recovered):
    project, validate = validated
    message = validate(project)
    assert message.startswith("validate p: 9 tables and 30 DB rows pass")
    metrics = json.loads(project.metrics("metrics.json").read_text())
    gen = recovered.gen.groups
    assert metrics["groups"] == len(gen) == metrics["db_rows"]
    for action in ("approve", "crop", "reject"):
        assert metrics[action] == sum(g.action == action for g in gen)
    assert metrics["unreadable_files"] == 4  # the generator's undecodable files
    # The model's figures are predict's (model_metrics.json) alone: a name in two metrics
    # files is too wide a column in `dvc exp show`.
    assert not {"selection_accuracy", "crop_n", "mean_iou"} & set(metrics)
    quality = evaluate(*(pd.read_parquet(project.output(t))
                         for t in ("truth", "groups", "predictions")),
                       project.settings.evaluate)
    iou = pd.read_csv(project.metrics("plots/iou.csv"))
    assert iou["decisions"].sum() == quality["crop_n"]
    picks = pd.read_csv(project.metrics("plots/picks.csv"))
    assert len(picks) == quality["selection_n"]
    assert (project.out_dir / "report.html").stat().st_size > 10_000


def test_metrics_and_plots_are_committable_and_the_same_bytes_on_a_rerun(validated):
    """metrics/<project>/ is committed to git beside dvc.lock: outside the git-ignored
    data/, and byte-identical when nothing changed (no clock, keys sorted), so a re-run
    changes no commit."""
    project, validate = validated
    validate(project)
    folder = project.metrics("metrics.json").parent
    assert folder == project.root / "metrics" / "p"
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "merge_summary.json", "metrics.json", "plots/accuracy_by_stage.csv",
        "plots/iou.csv", "plots/picks.csv"]
    first = {f: f.read_bytes() for f in files}
    text = first[folder / "metrics.json"].decode()
    assert list(json.loads(text)) == sorted(json.loads(text))
    validate(project)
    assert {f: f.read_bytes() for f in files} == first


class Decodes(list):
    """Every path the report decodes (the real decode still runs), and on which threads."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()


@pytest.fixture
def decoded(monkeypatch) -> Decodes:
    from backfill.reports import report

    calls = Decodes()
    real = report.decode

    def recorded(*args):
        calls.append(args[0])
        calls.threads.add(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(report, "decode", recorded)
    return calls


def test_a_rerun_draws_no_thumbnail_twice_and_the_report_is_the_same(validated, decoded):
    project, validate = validated
    validate(project)
    first = (project.out_dir / "report.html").read_bytes()
    assert decoded, "the first run draws its thumbnails"
    drawn = len(decoded)
    decoded.clear()
    validate(project)  # a re-run, e.g. after a tolerance change elsewhere
    assert decoded == []
    assert (project.out_dir / "report.html").read_bytes() == first
    # Without the cache every thumbnail is drawn again, to the same bytes.
    for path in (project.cache_dir / "thumbnail").iterdir():
        path.unlink()
    validate(project)
    assert len(decoded) == drawn
    assert (project.out_dir / "report.html").read_bytes() == first


def test_thumbnails_drawn_on_threads_make_the_same_report_decoding_each_once(validated,
                                                                           decoded):
    project, validate = validated
    reports, drawn = {}, {}
    for workers in (1, 3):
        for path in (project.cache_dir / "thumbnail").glob("*"):
            path.unlink()
        decoded.clear()
        decoded.threads.clear()
        project.cfg.validate.workers = workers
        validate(project)
        reports[workers] = (project.out_dir / "report.html").read_bytes()
        drawn[workers] = sorted(decoded)
        # Drawn by draw()'s pool, none while the page is built on this thread.
        assert decoded and threading.get_ident() not in decoded.threads
    assert drawn[3] == drawn[1]
    assert reports[3] == reports[1]


def open_in_chromium(path, fragment: str = "") -> tuple[str, list[str]]:
    """The DOM after scripts ran, and the console messages of the page; ``fragment``
    (``#...``) is what a reader's address would carry, e.g. the report's filters."""
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--enable-logging=stderr", "--log-level=0", "--dump-dom",
                           path.as_uri() + fragment], capture_output=True, text=True,
                          timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.mark.slow  # starts a browser
def test_the_report_renders_in_chromium_with_the_right_counts(validated, tmp_path):
    project, validate = validated
    validate(project)
    dom, console = open_in_chromium(project.out_dir / "report.html")
    assert console == []
    assert 'data-rendered="' in dom  # its script ran to the end
    metrics = json.loads(project.metrics("metrics.json").read_text())
    shown = dict(re.findall(r'data-count="(\w+)">(\d+)<', dom))
    for key in ("groups", "approve", "crop", "reject", "unreadable_finals", "broken_rejects",
                "needs_review", "orphans", "unreadable_files", "db_rows"):
        assert int(shown[key]) == metrics[key], key
    assert not re.search(r'(src|href)="(https?:)?//', dom)  # nothing loads from outside
    quality = evaluate(*(pd.read_parquet(project.output(t))
                         for t in ("truth", "groups", "predictions")),
                       project.settings.evaluate)
    misses = {"pick": quality["selection_n"] * (1 - quality["selection_accuracy"]),
              "crop": quality["crop_n"] * (1 - quality["crop_accuracy"])}
    for kind, n in misses.items():  # the heading counts what the accuracies count
        assert int(shown[f"{kind}_disagreements"]) == round(n), kind
    assert max(misses.values()) <= int(shown["disagreements"]) <= sum(misses.values())
    # The checker does see a broken page.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFn();</script></body></html>")
    assert any("undefinedFn" in line for line in open_in_chromium(bad)[1])


class Gallery(HTMLParser):
    """From a dumped DOM: the ids of the page's sections, and each gallery item's data
    attributes, whether it is hidden, and its boxes by class."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.sections: set[str] = set()
        self.items: dict[str, dict] = {}
        self.shown = None
        self._item: dict | None = None
        self._in_shown = False
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.add(a["id"])
        elif tag == "figure" and a.get("class") == "item":
            self._item = self.items[a["data-group"]] = {**a, "hidden": "hidden" in a,
                                                        "boxes": {}}
        elif tag == "rect" and self._item is not None:
            self._item["boxes"][a["class"]] = [float(a[k]) for k in ("x", "y", "width",
                                                                     "height")]
        self._in_shown = a.get("id") == "gallery-shown"

    def handle_data(self, data: str) -> None:
        if self._in_shown:
            self.shown, self._in_shown = int(data), False


def as_rect(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


@pytest.mark.slow  # starts a browser
def test_the_gallery_draws_both_boxes_filters_in_the_page_and_empty_sections_are_absent(
        validated):
    project, validate = validated
    validate(project)
    truth = pd.read_parquet(project.output("truth")).set_index("group_id")
    predictions = pd.read_parquet(project.output("predictions")).set_index("group_id")
    page = Gallery(open_in_chromium(project.out_dir / "report.html")[0])
    items = page.items
    kept = truth[truth["original_path"].notna()]
    assert len(items) == min(len(kept), project.cfg.validate.max_cases) and page.shown == len(items)
    assert not any(i["hidden"] for i in items.values())
    for group_id, item in items.items():  # the person's box green, the AI's orange
        if truth.loc[group_id, "crop_x1"] == truth.loc[group_id, "crop_x1"]:  # not NaN
            assert item["boxes"]["user-box"] == pytest.approx(
                as_rect(truth.loc[group_id, CROP_BOX].tolist()), abs=1e-4)
        assert item["boxes"]["ai-box"] == pytest.approx(
            as_rect(predictions.loc[group_id, BOX].tolist()), abs=1e-4)
    assert sum("user-box" in i["boxes"] for i in items.values()) > len(items) / 2
    # A filter in the address hides the items it excludes, in the page itself.
    ious = sorted(float(i["data-iou"]) for i in items.values() if i["data-iou"])
    bound = ious[len(ious) // 2]
    filtered = Gallery(open_in_chromium(project.out_dir / "report.html",
                                        f"#max_iou={bound}&review=no")[0])
    for group_id, item in filtered.items.items():
        keep = (item["data-iou"] != "" and float(item["data-iou"]) <= bound
                and not truth.loc[group_id, "needs_review"])
        assert item["hidden"] != keep, group_id
    assert 0 < filtered.shown < len(items)
    assert filtered.shown == sum(not i["hidden"] for i in filtered.items.values())
    # A section with nothing to show is not on the page.
    metrics = json.loads(project.metrics("metrics.json").read_text())
    counts = {"reviews": metrics["needs_review"], "orphans": metrics["orphans"],
              "unreadable-finals": metrics["unreadable_finals"],
              "broken-rejects": metrics["broken_rejects"],
              "unreadable": metrics["unreadable_files"],
              "ungrouped": len(pd.read_parquet(project.output("ungrouped"))),
              "gallery": len(kept)}
    assert {s for s, n in counts.items() if n} <= page.sections
    assert not {s for s, n in counts.items() if not n} & page.sections
    assert not all(counts.values()), "the generated project leaves some section empty"


def test_a_corrupted_value_stops_validation_naming_table_column_and_value(validated):
    project, validate = validated
    truth = pd.read_parquet(project.output("truth"))
    truth.loc[0, "user_action"] = "skipped"
    write_parquet(truth, project.output("truth"))
    with pytest.raises(ContractError) as err:
        validate(project)
    text = str(err.value)
    assert "table 'truth'" in text and "column 'user_action'" in text and "'skipped'" in text


def test_seed_000s_db_checks_fail_the_stage(validated):
    project, validate = validated
    db = project.out_dir / "ai_decisions.db"
    with sqlite3.connect(db) as conn:
        gid = conn.execute("SELECT d.group_id FROM ai_decisions d JOIN backfill_provenance p "
                           "USING (group_id) WHERE user_action = 'crop' AND "
                           "p.source = 'backfill' LIMIT 1").fetchone()[0]
        conn.execute("UPDATE ai_decisions SET final_crop_coords = NULL WHERE group_id = ?",
                     (gid,))
    conn.close()
    with pytest.raises(ContractError, match=f"crop rows without coordinates: 1 row\\(s\\): {gid}"):
        validate(project)


def test_an_unreadable_final_must_be_reported_by_the_merge_and_not_written():
    from backfill.stages.validate import check_unreadable

    truth = pd.DataFrame({"group_id": ["g1", "g2"], "user_action": ["unreadable", "crop"]})
    reported = pd.DataFrame({"kind": ["final_unreadable"], "group_id": ["g1"], "detail": ["x"]})
    nothing = pd.DataFrame({"group_id": ["r2"], "source": ["backfill"],
                            "backfill_group_id": ["g2"]})
    assert check_unreadable(truth, reported, nothing) == []
    unreported = check_unreadable(truth, reported.assign(kind="pick_differs"), nothing)
    assert [f.check for f in unreported] == ["unreadable finals the merge did not report"]
    written = check_unreadable(truth, reported, pd.concat([nothing, pd.DataFrame(
        {"group_id": ["r1"], "source": ["backfill"], "backfill_group_id": ["g1"]})]))
    assert [(f.check, f.group_ids) for f in written] == [
        ("unreadable finals written to the DB", ["g1"])]


def test_rows_naming_images_in_older_forms_are_found_in_the_scan():
    """validate reads `images` with the merge's one reader: repr lists, folder prefixes,
    other case and another extension are the same renders, not missing ones."""
    from backfill.db.schema import COLUMNS
    from backfill.stages.validate import check_decisions

    names = ["20250101_000000_stage1_generated.png", "20250101_000015_stage2_upscaled.png"]
    forms = [json.dumps(names), repr(names), json.dumps([f"batch_00/{n}" for n in names]),
             json.dumps([n.upper().replace(".PNG", ".png") for n in names][:1] + names[1:]),
             json.dumps([n.replace(".png", ".jpg") for n in names]), '["gone.png"]']
    rows = pd.DataFrame([{c: None for c in COLUMNS} | {
        "group_id": f"g{i}", "images": form, "user_action": "reject",
        "user_selected_index": 0} for i, form in enumerate(forms)], columns=COLUMNS)
    found = check_decisions(rows, pd.Series(["backfill"] * len(rows)), set(names), 0.02)
    missing = [f for f in found if f.check == "rows naming images the scan did not find"]
    assert [f.group_ids for f in missing] == [["g5"]]


def test_groups_a_live_row_shares_are_reported_by_the_merge_and_validate_passes(validated):
    """A live row naming renders of two groups: neither group is merged nor added, both
    are reported naming the row, and validate accepts that; without those reports it
    still stops on them."""
    from backfill.db.cells import name_keys
    from backfill.stages.merge import run as merge

    project, validate = validated
    live = project.path("real_db")
    with sqlite3.connect(live) as conn:
        logged = set().union(*(name_keys(s) for (s,) in conn.execute(
            "SELECT images FROM ai_decisions")))
        groups = pd.read_parquet(project.output("groups"))
        free = groups[groups["image_names"].map(lambda ns: not name_keys(json.dumps(list(ns)))
                                                & logged)].head(2)
        names = [ns[0] for ns in free["image_names"]]
        conn.execute("INSERT INTO ai_decisions (group_id, timestamp, project_id, images, "
                     "user_selected_index, user_action, image_width, image_height) VALUES "
                     "('both', 't', 'p', ?, 0, 'reject', 8, 8)", (json.dumps(names),))
    conn.close()
    assert len(free) == 2
    merge(project)
    issues = pd.read_parquet(project.output("merge_issues"))
    mine = issues[issues["group_id"].isin(free["group_id"])]
    assert mine["kind"].tolist() == ["ambiguous_group"] * 2
    assert mine["detail"].str.contains("live row both").all()
    validate(project)  # every group accounted for
    write_parquet(issues[issues["kind"] != "ambiguous_group"], project.output("merge_issues"))
    with pytest.raises(ContractError, match="groups missing from the DB: 2 row"):
        validate(project)
