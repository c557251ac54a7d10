"""Review app speed: how fast a case's page loads, and whether a long queue slows it.

Generates a project (scan, group and extract, as the pipeline runs them), then serves
its review app in-process (Starlette's test client: the app's own work, no network) and
times, best of R:
- the page of the first case, cold (its thumbnails never drawn) and warm (drawn, in the
  thumbnail cache the report shares), with every image the page shows fetched;
- the same with the queue grown to 10 and to 1,000 cases: the project's doubtful groups
  repeated under new ids, so each case shows real renders. The target: 1,000 open as
  fast as 10 (the ratio is printed).

    python benchmarks/bench_review.py [--groups 12] [--repeat 5]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import timed  # noqa: E402
from tests.helpers.recover import recover  # noqa: E402

TOKEN = "bench"


def project_tables(root: Path, groups: int) -> tuple[dict[str, pd.DataFrame], object]:
    from backfill.demo.synthetic import make_project

    done = recover(make_project(root / "p", n_groups=groups, seed=3, scale=0.25),
                   root / "cache")
    return {"truth": done.truth, "finals": done.finals, "groups": done.groups,
            "ungrouped": done.ungrouped, "scan": done.scan}, done.gen


def grown(tables: dict[str, pd.DataFrame], cases: int) -> dict[str, pd.DataFrame]:
    """``tables`` with ``cases`` doubtful groups: the located ones repeated under new ids
    (every other case of the queue dropped)."""
    truth, groups = tables["truth"], tables["groups"]
    seed = truth[truth["crop_x1"].notna()]
    copies = [seed.iloc[[i % len(seed)]].assign(group_id=f"p_group_{i:06d}")
              for i in range(cases)]
    many = pd.concat(copies, ignore_index=True).assign(needs_review=True,
                                                       review_reason="doubtful (benchmark)")
    members = groups.set_index("group_id").loc[seed["group_id"]].reset_index()
    many_groups = pd.concat([members.iloc[[i % len(members)]].assign(group_id=f"p_group_{i:06d}")
                             for i in range(cases)], ignore_index=True)
    finals = tables["finals"][tables["finals"]["role"] != "orphan"]
    return {**tables, "truth": many.astype(truth.dtypes.to_dict()), "groups": many_groups,
            "finals": finals, "ungrouped": tables["ungrouped"].iloc[:0]}


def page_seconds(client: TestClient) -> float:
    """One page of the first case and every image it shows."""
    def load() -> None:
        page = client.get(f"/?t={TOKEN}")
        assert page.status_code == 200
        for image in re.findall(r"/image/([A-Za-z0-9_-]+)\?t=", page.text):
            assert client.get(f"/image/{image}?t={TOKEN}").status_code == 200
    return timed(load)[0]


def main() -> None:
    from backfill.reports.report import Thumbnails
    from backfill.review.app import Session, create_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tables, gen = project_tables(root, args.groups)

        def client(tabs: dict[str, pd.DataFrame]) -> tuple[TestClient, Session]:
            hashed = tabs["scan"][tabs["scan"]["content_hash"].notna()]
            folder = {"original": gen.original_dir, "final": gen.final_dir}
            thumbs = Thumbnails(root / "cache", 40_000_000, {
                folder[s] / r: h for s, r, h in zip(hashed["source"], hashed["rel_path"],
                                                    hashed["content_hash"], strict=True)})
            session = Session("p", tabs, gen.original_dir, gen.final_dir,
                              root / "reviews" / "p.jsonl", thumbs)
            return TestClient(create_app(session, TOKEN), base_url="http://127.0.0.1"), session

        app, session = client(tables)
        cold = page_seconds(app)
        warm = min(page_seconds(app) for _ in range(args.repeat))
        print(f"first case's page with its {len(session.images)} images: cold "
              f"{cold * 1000:.0f} ms (thumbnails drawn), warm {warm * 1000:.1f} ms "
              f"(best of {args.repeat})")
        session.thumbs.save()
        by_size = {}
        for cases in (10, 1000):
            app, session = client(grown(tables, cases))
            page_seconds(app)  # this client's first request
            assert len(session.queue()) == cases
            by_size[cases] = min(page_seconds(app) for _ in range(args.repeat))
            print(f"{cases:>5} cases queued: page {by_size[cases] * 1000:.1f} ms")
        print(f"1,000 cases / 10 cases: {by_size[1000] / by_size[10]:.2f}x")


if __name__ == "__main__":
    main()
