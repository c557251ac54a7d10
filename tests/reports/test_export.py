"""`backfill export`: the historical extraction plan's training entries, checked
against the generator's truth."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from backfill import cli
from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.files.atomic import write_parquet
from backfill.reports import export


@pytest.fixture(scope="module")
def records(recovered):
    gen = recovered.gen
    return export.build_records("p", recovered.groups, recovered.truth, gen.original_dir,
                                gen.final_dir)


def _by_group(records):
    return {gid: row for gid, row in zip(records["group_id"], records.to_dict("records"),
                                         strict=True)}


def test_one_entry_per_group_with_the_kept_render_against_the_others(recovered, records):
    gen = recovered.gen
    rows = _by_group(records)
    assert len(records) == len(rows) == len(gen.groups)
    for g in gen.groups:
        row = rows[f"p_group_{g.first_timestamp}"]
        paths = [str(gen.original_dir / p) for p in g.rel_paths]
        assert row["timestamp"] == g.first_timestamp
        assert row["user_action"] == g.action
        if g.kept_index is None:
            assert row["kind"] == "rejected" and pd.isna(row["chosen_path"])
            assert row["neg_paths"] == paths and row["neg_stages"] == g.stages
            assert not row["was_cropped"] and not row["anomaly"] and row["crop_box"] is None
            continue
        others = [k for k in range(len(paths)) if k != g.kept_index]
        assert row["kind"] == "selection"
        assert row["chosen_path"] == paths[g.kept_index]
        assert row["chosen_stage"] == g.stages[g.kept_index]
        assert row["neg_paths"] == [paths[k] for k in others]
        assert row["neg_stages"] == [g.stages[k] for k in others]
        assert row["was_cropped"] == (g.action == "crop")
        assert row["final_path"] == str(gen.final_dir / g.final_rel_path)
        assert len(row["crop_box"]) == 4


def test_anomalies_are_exactly_the_groups_that_kept_a_lower_stage(recovered, records):
    expected = {f"p_group_{g.first_timestamp}" for g in recovered.gen.groups
                if g.kept_index is not None and g.stages[g.kept_index] < max(g.stages)}
    assert expected  # the fixture has some, or this test proves nothing
    assert set(records.loc[records["anomaly"], "group_id"]) == expected


def test_needs_review_decisions_are_kept_flagged_or_left_out(recovered, records):
    flagged = set(recovered.truth.loc[recovered.truth["needs_review"], "group_id"])
    assert flagged
    rows = _by_group(records)
    assert all(rows[gid]["needs_review"] and rows[gid]["review_reason"] for gid in flagged)
    kept = export.select(records, exclude_needs_review=True)
    assert set(kept["group_id"]) == set(records["group_id"]) - flagged


def test_stats_count_seed_002s_figures(recovered, records):
    groups = recovered.gen.groups
    kept = [g for g in groups if g.kept_index is not None]
    anomaly = [g for g in kept if g.stages[g.kept_index] < max(g.stages)]
    cropped = [g for g in kept if g.action == "crop"]
    flagged = recovered.truth.set_index("group_id")["needs_review"]
    n_flagged = int(flagged.sum())
    stats = export.export_stats(records, exclude_needs_review=False)
    assert stats == {"groups": len(groups), "with_winner": len(kept),
                     "rejected": len(groups) - len(kept), "anomaly": len(anomaly),
                     "cropped": len(cropped), "needs_review": n_flagged,
                     "excluded_needs_review": 0}
    out = export.export_stats(records, exclude_needs_review=True)
    assert out["groups"] == len(groups) and out["excluded_needs_review"] == n_flagged
    assert out["with_winner"] + out["rejected"] + n_flagged == len(groups)
    text = export.render_stats("p", stats)
    assert text.startswith("p:\n  Total groups: 30\n")
    share = f"{len(anomaly) / len(kept):.1%}"
    assert f"  Anomaly cases (chose lower stage): {len(anomaly)} ({share})" in text
    assert export.total_stats([stats, stats])["anomaly"] == 2 * len(anomaly)
    assert f"Needs review: {n_flagged} (included, flagged)" in text
    # Left out on request: said so, even when no decision of the project was flagged.
    none_flagged = {**out, "excluded_needs_review": 0}
    assert "Needs review: 0 (excluded)" in export.render_stats("p", none_flagged, True)


def test_jsonl_and_csv_round_trip(records, tmp_path):
    files = export.write_export(records, tmp_path, "p")
    assert [f.name for f in files] == ["p.jsonl", "p.csv"]
    same = export.to_json_rows(records)
    assert export.to_json_rows(export.read_jsonl(tmp_path / "p.jsonl")) == same
    assert export.to_json_rows(export.read_csv(tmp_path / "p.csv")) == same
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert list(first) == [*export.TOP, "metadata"] and list(first["metadata"]) == export.METADATA
    # No groups at all: header-only CSV, empty JSONL, both read back empty.
    empty = records.iloc[:0]
    export.write_export(empty, tmp_path, "none")
    assert len(export.read_csv(tmp_path / "none.csv")) == len(export.read_jsonl(
        tmp_path / "none.jsonl")) == 0


def _project(name: str, root: Path, recovered) -> Project:
    cfg = OmegaConf.create({"original_dir": str(recovered.gen.original_dir),
                            "final_dir": str(recovered.gen.final_dir)})
    project = Project(name, root, cfg, root / "data" / "cache")
    write_parquet(recovered.groups, project.output("groups"))
    write_parquet(recovered.truth, project.output("truth"))
    return project


def test_cli_exports_every_project_and_the_combined_files(recovered, records, tmp_path,
                                                          monkeypatch, capsys):
    projects = {n: _project(n, tmp_path, recovered) for n in ("p", "q")}
    monkeypatch.setattr(cli, "find_root", lambda: tmp_path)
    monkeypatch.setattr("backfill.projects.select.load_project",
                        lambda name, root: projects[name])
    monkeypatch.setattr("backfill.projects.select.registered", lambda root: sorted(projects))
    assert cli.main(["export", "--all", "--exclude-needs-review"]) == 0
    out = capsys.readouterr().out
    n = len(export.select(records, exclude_needs_review=True))
    assert "p:\n" in out and "q:\n" in out and "Total (2 projects):\n  Total groups: 60" in out
    assert "data/export/_all.jsonl, data/export/_all.csv" in out
    combined = export.read_jsonl(tmp_path / "data" / "export" / "_all.jsonl")
    assert len(combined) == 2 * n and set(combined["project"]) == {"p", "q"}
    assert not combined["needs_review"].any()
    assert len(export.read_csv(tmp_path / "data" / "export" / "q.csv")) == n

    assert cli.main(["export", "p", "--format", "csv", "--out", str(tmp_path / "x")]) == 0
    assert [f.name for f in (tmp_path / "x").iterdir()] == ["p.csv"]
    assert cli.main(["export"]) == 2  # neither names nor --all


def test_missing_tables_say_which_stage_to_run(tmp_path):
    project = Project("p", tmp_path, OmegaConf.create({}), tmp_path / "cache")
    with pytest.raises(UserError, match=r"dvc repro extract@p"):
        export.load_records(project)


def test_folders_inside_the_repository_are_exported_as_configured(recovered, tmp_path):
    """original_dir inside the repository, configured relative: the export names it so,
    not by this machine's folder; final_dir outside: as configured."""
    gen, root = recovered.gen, tmp_path / "repo"
    root.mkdir()
    (root / "renders").symlink_to(gen.original_dir)
    project = Project("p", root, OmegaConf.create({
        "original_dir": "renders", "final_dir": str(gen.final_dir)}), root / "cache")
    write_parquet(recovered.groups, project.output("groups"))
    write_parquet(recovered.truth, project.output("truth"))
    records = export.load_records(project)
    chosen, finals = records["chosen_path"].dropna(), records["final_path"].dropna()
    assert len(chosen) and all(p.startswith("renders/") for p in chosen)
    assert len(finals) and all(p.startswith(f"{gen.final_dir}/") for p in finals)
