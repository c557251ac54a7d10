"""The merge plan names the production DB as the project configures it, so clones of one
repository in different folders write the same plan; publish still finds the DB the plan
was made against and refuses another one."""

from __future__ import annotations

import shutil

import pytest

from backfill.config.errors import UserError
from backfill.contracts.plan import plan_identity
from backfill.contracts.schemas import MergePlanTable
from backfill.contracts.tables import read_table
from backfill.demo.production import make_production_db
from backfill.production.publish import run_publish
from backfill.stages.merge import run as merge_run
from tests.helpers.stage_project import digest, make_stage_project


@pytest.fixture
def two_clones(tmp_path, recovered):
    """The same project in two folders, each with its own copy of one production DB at
    live/ai_decisions.db inside it, configured relative to the repository."""
    first = tmp_path / "here" / "repo"
    db = make_production_db(recovered.gen, first / "live" / "ai_decisions.db", seed=5).path
    second = tmp_path / "elsewhere" / "clone"
    (second / "live").mkdir(parents=True)
    shutil.copy2(db, second / "live" / "ai_decisions.db")
    projects = [make_stage_project(root, recovered, real_db="live/ai_decisions.db")
                for root in (first, second)]
    for project in projects:
        merge_run(project)
    return projects


def test_clones_in_two_folders_write_the_same_plan(two_clones):
    here, there = two_clones
    for table in ("merge_plan", "merge_issues"):
        assert digest(here.output(table)) == digest(there.output(table))
    assert digest(here.out_dir / "ai_decisions.db") == digest(there.out_dir / "ai_decisions.db")
    plan = read_table(here.output("merge_plan"), MergePlanTable)
    assert plan_identity(plan)["path"] == "live/ai_decisions.db"


def test_an_absolute_path_inside_the_repository_is_recorded_relative(tmp_path, recovered):
    root = tmp_path / "repo"
    db = make_production_db(recovered.gen, root / "live" / "ai_decisions.db", seed=5).path
    project = make_stage_project(root, recovered, real_db=db)
    assert project.recorded("real_db") == "live/ai_decisions.db"
    outside = make_production_db(recovered.gen, tmp_path / "drive" / "ai.db", seed=5).path
    project.cfg.real_db = str(outside)
    assert project.recorded("real_db") == str(outside)  # a setting the user gave


def test_publish_finds_the_planned_db_and_refuses_another(two_clones, tmp_path, recovered):
    here, _ = two_clones
    db = here.root / "live" / "ai_decisions.db"
    # The same DB named another way (absolute, or by a link outside the repository): the
    # plan is bound to it, and its rows have not moved.
    link = tmp_path / "link.db"
    link.symlink_to(db)
    for name in (db, link):
        here.cfg.real_db = str(name)
        assert "unchanged since" in run_publish(here, dry_run=True)
    other = make_production_db(recovered.gen, tmp_path / "other" / "ai_decisions.db", seed=9)
    before = digest(other.path)
    here.cfg.real_db = str(other.path)
    with pytest.raises(UserError) as err:
        run_publish(here, dry_run=False)
    assert str(db.resolve()) in str(err.value) and str(other.path) in str(err.value)
    assert digest(other.path) == before
    here.cfg.real_db = "live/ai_decisions.db"
    assert "published p" in run_publish(here, dry_run=False)
