"""The review loop, as you would run it: `dvc repro`, `backfill review` in Chromium driven
by the keyboard, `dvc repro` again. Three kinds of case are settled (a doubtful pick, an
orphan final assigned to its group, a reject); the next repro puts them in
ai_decisions.db with provenance 'reviewed'; a second `review` opens where you stopped; a
changed answer re-runs extract from its caches; an answer whose files changed is
reported and not applied."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backfill.demo.synthetic import make_project
from tests.conftest import BIN, run
from tests.helpers.browser import chromium
from tests.helpers.odd_files import break_a_kept_final

pytestmark = pytest.mark.slow
GROUP_KINDS = ("needs_review", "unreadable_final", "name_clash")


def orphan_of_a_rejected_group(project) -> tuple[str, str, int]:
    """A kept final that no name ties to its group: a crop of a rejected group's last
    render, named after a render that does not exist (so it is never paired by content
    either). Returns (its path under the final folder, the group's first timestamp, the
    render's index)."""
    group = next(g for g in project.groups if g.kept_index is None and len(g.rel_paths) > 1)
    index = len(group.rel_paths) - 1
    render = Image.open(project.original_dir / group.rel_paths[index])
    w, h = render.size
    day, clock = group.first_timestamp.split("_")
    name = f"{day}_{int(clock) + 1:06d}_stage2_upscaled.png"  # one second on: no render
    render.crop((w // 8, h // 8, w * 7 // 8, h * 7 // 8)).save(project.final_dir / name)
    return name, group.first_timestamp, index


class Review:
    """`backfill review NAME --no-browser` running, and the address it printed."""

    def __init__(self, repo: Path, name: str) -> None:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.proc = subprocess.Popen(["backfill", "review", name, "--no-browser"], cwd=repo,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.said = []
        while True:
            line = self.proc.stdout.readline()
            assert line, f"review stopped: {''.join(self.said)}"
            self.said.append(line)
            found = re.search(r"review at (http://\S+)", line)
            if found:
                self.url = found.group(1)
                return

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        self.proc.wait(timeout=30)


def shown(page) -> tuple[str, str]:
    case = page.locator("#case")
    return case.get_attribute("data-kind"), case.get_attribute("data-subject")


def press(page, *keys: str) -> float:
    """Press ``keys``; the last one answers, and the next case's page loads. Seconds."""
    started = time.perf_counter()
    for key in keys[:-1]:
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press(keys[-1])
    page.wait_for_load_state("load")
    return time.perf_counter() - started


def decided(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT d.group_id, d.user_action, d.user_selected_index, p.decided_by "
            "FROM ai_decisions d JOIN backfill_provenance p USING (group_id)").fetchall()
    conn.close()
    return {g: tuple(rest) for g, *rest in rows}


def test_review_in_the_browser_then_repro_applies_it(repo_copy, tmp_path):
    from playwright.sync_api import sync_playwright

    project = make_project(tmp_path / "rv", n_groups=10, seed=3, scale=0.05)
    orphan, orphan_group_time, orphan_index = orphan_of_a_rejected_group(project)
    break_a_kept_final(project)
    run(["backfill", "project", "add", "rv", "--original-dir", str(project.original_dir),
         "--final-dir", str(project.final_dir), "embed.pretrained=null"], repo_copy)
    assert (repo_copy / "reviews" / "rv.jsonl").read_text() == ""  # composed, empty
    run(["dvc", "repro"], repo_copy)
    reviews = repo_copy / "reviews" / "rv.jsonl"

    review = Review(repo_copy, "rv")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        refused = page.goto(review.url.split("?")[0])
        assert refused.status == 403  # no token, no page
        page.goto(review.url)
        left = int(re.search(r"(\d+) left", page.locator("h1").inner_text()).group(1))
        assert left >= 3
        # A doubtful pick: image 1 chosen by its number, approved whole.
        kind, pick_group = shown(page)
        assert kind in GROUP_KINDS
        seconds = [press(page, "1", "a")]
        assert shown(page)[1] != pick_group

        # A second `review` opens where you stopped.
        review.stop()
        review = Review(repo_copy, "rv")
        page.goto(review.url)
        assert f"{left - 1} left" in page.locator("h1").inner_text()
        assert shown(page)[1] != pick_group

        # A reject, and the orphan assigned to its group; other cases skipped.
        reject_group = None
        for _ in range(left):
            kind, subject = shown(page)
            if kind == "orphan" and subject == orphan:
                captions = page.locator(".renders figcaption").all_inner_texts()
                offered = [c for c in captions if c.endswith(f"_{orphan_group_time}")]
                assert offered, captions
                seconds.append(press(page, offered[0].split()[0]))
                orphan = None
            elif reject_group is None and kind in GROUP_KINDS:
                reject_group = subject
                seconds.append(press(page, "r"))
            elif orphan is None and reject_group is not None:
                break
            else:
                press(page, "s")
        browser.close()
    review.stop()
    answers = reviews.read_text().splitlines()
    assert len(answers) == 3 and max(seconds) < 10, seconds

    out = run(["dvc", "repro"], repo_copy).stdout
    assert "3 applied, 0 not" in out, out
    db = repo_copy / "data" / "rv" / "ai_decisions.db"
    rows = decided(db)
    assert rows[pick_group] == ("approve", 0, "reviewed")
    assert rows[reject_group][0] == "reject" and rows[reject_group][2] == "reviewed"
    orphan_group = next(g for g in rows if g.endswith(orphan_group_time))
    action, index, by = rows[orphan_group]
    assert (action, index, by) == ("crop", orphan_index, "reviewed"), rows[orphan_group]

    # One answer changed: extract re-runs from its caches, nothing is matched again.
    text = reviews.read_text()
    assert text.count('{"action": "reject"}') == 1
    reviews.write_text(text.replace('{"action": "reject"}', '{"action": "approve", "index": 0}'))
    started = time.perf_counter()
    out = run(["dvc", "repro"], repo_copy).stdout
    took = time.perf_counter() - started
    assert "Running stage 'extract@rv'" in out and "0 matched" in out, out
    assert "Running stage 'scan@rv'" not in out
    assert decided(db)[reject_group] == ("approve", 0, "reviewed")
    print(f"seconds per decision by keyboard: {np.mean(seconds):.2f} (max "
          f"{max(seconds):.2f}); one answer changed, repro {took:.1f}s")

    # A render of the doubtful pick changes: its answer is reported, not applied.
    group = next(g for g in project.groups if pick_group.endswith(g.first_timestamp))
    render = project.original_dir / group.rel_paths[0]
    pixels = np.asarray(Image.open(render)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(render)
    out = run(["dvc", "repro"], repo_copy).stdout
    assert f"answer not applied, needs_review {pick_group}" in out or \
        f"answer not applied, {kind} {pick_group}" in out, out
    assert "changed since you answered" in out
    assert decided(db)[pick_group][2] == "files"
