"""History and other machines: a project repository pushed to a remote (a folder, as on
an external drive), cloned into another folder and pulled, rebuilds nothing and writes
the same bytes; an older commit's outputs come back with `dvc checkout`."""

import hashlib
import json
import shutil

import pytest

from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project
from tests.conftest import REPO, run

pytestmark = pytest.mark.slow



def outputs(repo) -> dict[str, str]:
    """sha256 of every file dvc.lock lists as a stage output, by its path in the repo."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        paths = sorted({str(o.def_path) for s in dvc.index.stages for o in s.outs})
    return {p: _digest(repo / p) for p in paths}


def _digest(path) -> str:
    """sha256 of a file, or of a folder's files (names and bytes); else 'missing'."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
        return h.hexdigest()
    return "missing"


def commit(repo, message: str) -> str:
    """Commit everything as a user would (`git add -A`), and return the commit. The
    outputs DVC does not cache (metrics, plots) must be git's to keep: none is ignored."""
    from dvc.repo import Repo

    run(["git", "add", "-A"], repo)
    with Repo(str(repo)) as dvc:
        uncached = [str(o.def_path) for s in dvc.index.stages for o in s.outs
                    if not o.use_cache]
    assert uncached
    run(["git", "ls-files", "--error-unmatch", *uncached], repo)  # all staged, none ignored
    run(["git", "commit", "-qm", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def changed(repo) -> set[str]:
    """Stages `dvc status` finds out of date for another reason than always running."""
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}")
    return {s for s, why in status.items() if why != ["always changed"]}


def test_a_clone_pulls_every_output_rebuilds_nothing_and_history_checks_out(
        repo_copy, tmp_path):
    repo = repo_copy
    shutil.copy2(REPO / ".gitignore", repo / ".gitignore")
    gen = make_project(tmp_path / "alpha", n_groups=6, seed=7, scale=0.1)
    # The production DB inside the repository, configured relative to it (as the demo's
    # is), and committed here so that the clone reads the same one.
    make_production_db(gen, repo / "live" / "alpha.db", seed=7)
    # The image folders are absolute paths the user gave: the same on both clones.
    run(["backfill", "project", "add", "alpha", "--original-dir", str(gen.original_dir),
         "--final-dir", str(gen.final_dir), "--real-db", "live/alpha.db",
         "embed.pretrained=null"], repo)
    # The remote: a folder, as on an external drive, named in .dvc/config (committed).
    drive = tmp_path / "drive" / "backfill-dvc"
    run(["dvc", "remote", "add", "-d", "drive", str(drive)], repo)
    run(["dvc", "repro"], repo)
    first, v1 = commit(repo, "v1"), outputs(repo)
    run(["dvc", "push"], repo)

    conf = repo / "conf" / "project" / "alpha.yaml"
    conf.write_text(conf.read_text() + "extract:\n  approve_tolerance: 0.3\n")
    run(["backfill", "compose"], repo)
    run(["dvc", "repro"], repo)
    commit(repo, "v2")
    v2 = outputs(repo)
    assert v2 != v1 and "missing" not in v1.values() and "missing" not in v2.values()
    run(["dvc", "push"], repo)

    # Another folder: the clone gets every output from the remote, and nothing is stale.
    clone = tmp_path / "elsewhere" / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert outputs(clone) == v2
    assert changed(clone) == set()
    out = run(["dvc", "repro"], clone).stdout
    reran = {line.split("'")[1] for line in out.splitlines()
             if line.startswith("Running stage")}
    # Only watch ran: it stamps the clone's files (its own checkout of the production DB
    # too) as the original's, byte for byte, so nothing after it ran.
    after = outputs(clone)
    assert [p for p in v2 if after[p] != v2[p]] == []
    assert reran == {"watch"}, out
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
    assert changed(clone) == set()

    # An older commit: `dvc checkout` puts its outputs back from the cache; a clone
    # whose cache holds only what it pulled gets them with `dvc pull`.
    for where, restore in ((repo, "checkout"), (clone, "pull")):
        run(["git", "checkout", "-q", first], where)
        run(["dvc", restore], where)
        assert outputs(where) == v1, where
        assert changed(where) == set()
