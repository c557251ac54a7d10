"""`backfill project discover`: past projects' folder pairs found, named, registered."""

from pathlib import Path, PurePosixPath

import pytest
import yaml
from PIL import Image

from backfill.projects.discover import Pair, pair_folders, plan, project_name
from tests.conftest import run


def _paths(*names: str) -> list[PurePosixPath]:
    return [PurePosixPath(n) for n in names]


def _pairs(found: list[Pair]) -> set[tuple[str, str, str, str]]:
    return {(p.folder_name, str(p.original), str(p.final), p.layout) for p in found}


def test_pairs_every_documented_layout():
    pairs, unpaired = pair_folders(_paths(
        "sandbox", "sandbox/mojo_old", "sandbox/Slender Kiara", "sandbox/lost",
        "mojo_old", "Slender Kiara", "Slender Kiara/sub",  # before/after layout, in root
        "Eleni_raw", "Eleni_final", "Kiara_raw", "Kiara",           # <p>_raw + <p>_final or <p>
        "archives", "archives/Aiko_raw_incoming", "archives/Aiko_raw_final",  # historical layout
        "archives/mojo1_raw", "mojo1",                              # final in the root
        "archives/orphan_raw",
        "agent-1003", "agent-1003/sandbox", "agent-1003/sandbox/agent-1003",
        "agent-1003/agent-1003",                                    # one folder per project
    ))
    assert _pairs(pairs) == {
        ("mojo_old", "sandbox/mojo_old", "mojo_old", "sandbox"),
        ("Slender Kiara", "sandbox/Slender Kiara", "Slender Kiara", "sandbox"),
        ("Eleni", "Eleni_raw", "Eleni_final", "raw"),
        ("Kiara", "Kiara_raw", "Kiara", "raw"),
        ("Aiko_raw", "archives/Aiko_raw_incoming", "archives/Aiko_raw_final", "raw"),
        ("mojo1", "archives/mojo1_raw", "mojo1", "raw"),
        ("agent-1003", "agent-1003/sandbox/agent-1003", "agent-1003/agent-1003", "sandbox"),
    }
    assert {str(u.original) for u in unpaired} == {"sandbox/lost", "archives/orphan_raw"}


def test_names_are_valid_and_registered_folders_are_told_apart(tmp_path):
    assert project_name("Slender Kiara") == "Slender-Kiara"
    assert project_name("  été/2024 (old) ") == "ete-2024-old"
    assert project_name("___") == "project"
    pairs = [Pair("a b", PurePosixPath("sandbox/a b"), PurePosixPath("a b"), "sandbox"),
             Pair("mojo1", PurePosixPath("mojo1_raw"), PurePosixPath("mojo1"), "raw"),
             Pair("old", PurePosixPath("old_raw"), PurePosixPath("old"), "raw")]
    rows = plan(pairs, tmp_path, {"mojo1": Path("/elsewhere"),
                                  "old-one": (tmp_path / "old_raw").resolve()}, {"a-b"})
    assert [(r.name, r.registered_as, r.note) for r in rows] == [
        ("a-b-2", None, "name from 'a b'; 'a-b' is taken"),
        ("mojo1-2", None, "'mojo1' is taken"),
        ("old-one", "old-one", None),
    ]


def _png(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 4), (200, 10, 10)).save(folder / name)


@pytest.mark.slow  # runs the CLI in a subprocess
def test_dry_run_lists_and_yes_registers(repo_copy, tmp_path):
    past = tmp_path / "past"
    renders = ("20250708_060711_stage1.png", "20250708_060726_stage2.png",
               "20250708_060741_stage3.png")
    _png(past / "sandbox" / "Slender Kiara", *renders)       # the before/after plan's layout
    _png(past / "Slender Kiara", renders[1])
    _png(past / "mojo1_raw" / "batch1", *renders[:2])  # the historical layout
    _png(past / "mojo1_final", renders[0])
    (past / "mojo1_raw" / "notes.yaml").write_text("not an image\n")
    config = repo_copy / "conf" / "config.yaml"
    before = config.read_text()

    out = run(["backfill", "project", "discover", str(past)], repo_copy).stdout
    assert "2 project(s) found, 2 new" in out
    assert "Slender-Kiara" in out and "name from 'Slender Kiara'" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("mojo1 "))
    assert line.split()[1:6] == ["raw", "mojo1_raw/", "2", "mojo1_final/", "1"]
    assert "run again with --yes" in out
    assert config.read_text() == before  # a dry run writes nothing
    assert not (repo_copy / "conf" / "project" / "mojo1.yaml").exists()

    out = run(["backfill", "project", "discover", str(past), "--yes"], repo_copy).stdout
    assert "registered 2 project(s): mojo1, Slender-Kiara" in out
    conf = yaml.safe_load((repo_copy / "conf" / "project" / "Slender-Kiara.yaml").read_text())
    assert conf["original_dir"] == str(past / "sandbox" / "Slender Kiara")
    assert conf["final_dir"] == str(past / "Slender Kiara")
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    assert set(params["projects"]) == {"Slender-Kiara", "mojo1"}

    out = run(["backfill", "project", "discover", str(past), "--yes"], repo_copy).stdout
    assert "registered as mojo1" in out and "nothing new to register" in out
    scan = run(["backfill", "scan", "mojo1"], repo_copy).stdout  # registered for real
    assert "read 3" in scan


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_missing_root_says_so(repo_copy, tmp_path):
    proc = run(["backfill", "project", "discover", str(tmp_path / "nope")], repo_copy,
               check=False)
    assert proc.returncode == 2 and "is not a folder" in proc.stderr


def test_a_failed_registration_leaves_the_configs_as_they_were(repo_copy, tmp_path,
                                                               monkeypatch):
    import backfill.config.project
    from backfill.config.errors import UserError
    from backfill.projects.discover import discover, register

    _png(tmp_path / "past" / "a_raw", "20250708_060711_stage1.png")
    _png(tmp_path / "past" / "a", "20250708_060711_stage1.png")
    found = discover(tmp_path / "past", repo_copy)
    assert [r.name for r in found.new] == ["a"]
    config = repo_copy / "conf" / "config.yaml"
    before = config.read_text()

    def broken(root):
        raise ValueError("no")

    monkeypatch.setattr(backfill.config.project, "compose", broken)
    with pytest.raises(UserError, match="nothing was registered"):
        register(found, repo_copy)
    assert config.read_text() == before
    assert not (repo_copy / "conf" / "project" / "a.yaml").exists()

    def interrupted(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(backfill.config.project, "compose", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while composing: rolled back too
        register(found, repo_copy)
    assert config.read_text() == before
    assert not (repo_copy / "conf" / "project" / "a.yaml").exists()


def test_settings_and_the_production_db_go_to_every_project(repo_copy, tmp_path, monkeypatch,
                                                            capsys):
    """The person's tools keep each project's DB in data/training/ai_training_decisions/
    of the folder holding its final folder: found, set as real_db, and said; KEY=VALUE
    settings (before or after the options) are stored for every project registered."""
    import sqlite3

    from backfill import cli
    from backfill.db.schema import create

    past = tmp_path / "image-workflow"
    renders = ("20250708_060711_stage1.png", "20250708_060726_stage2.png")
    for name in ("mojo1", "mojo2"):
        _png(past / f"{name}_raw", *renders)
        _png(past / name, renders[1])
    dbs = past / "data" / "training" / "ai_training_decisions"
    dbs.mkdir(parents=True)
    with sqlite3.connect(dbs / "mojo1.db") as conn:
        create(conn)
    conn.close()
    (dbs / "mojo2_backfill_temp.db").write_bytes(b"")  # a temporary DB is not production
    monkeypatch.chdir(repo_copy)

    assert cli.main(["project", "discover", str(past), "group.lookahead=25"]) == 0
    out = capsys.readouterr().out
    assert f"production DB of mojo1: {dbs / 'mojo1.db'}" in out
    assert "no production DB found for mojo2" in out
    assert not (repo_copy / "conf" / "project" / "mojo1.yaml").exists()  # a dry run

    assert cli.main(["project", "discover", str(past), "--yes", "embed.pretrained=null",
                     "--model", "baseline", "group.lookahead=25"]) == 0
    assert "registered 2 project(s): mojo1, mojo2" in capsys.readouterr().out
    conf = {n: yaml.safe_load((repo_copy / "conf" / "project" / f"{n}.yaml").read_text())
            for n in ("mojo1", "mojo2")}
    assert conf["mojo1"]["real_db"] == str(dbs / "mojo1.db")
    assert conf["mojo2"].get("real_db") is None
    for c in conf.values():
        assert c["embed"]["pretrained"] is None and c["group"]["lookahead"] == 25
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    assert params["projects"]["mojo2"]["embed"]["pretrained"] is None


def test_an_unknown_setting_stops_discover_before_it_walks(repo_copy, tmp_path, monkeypatch,
                                                          capsys):
    from backfill import cli

    monkeypatch.chdir(repo_copy)
    assert cli.main(["project", "discover", str(tmp_path), "group.lookahed=25"]) == 2
    assert "did you mean group.lookahead" in capsys.readouterr().err
