"""How the merge ends every backfilled group (hypothesis): over live rows that share
image names with no group, one, or several, each group is merged, added or reported,
exactly one of them, as the generated links say it must be; and validate, judging the
merge's own outputs by the same definition, agrees."""

from __future__ import annotations

import json

import pandas as pd
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backfill.contracts.schemas import UNREADABLE
from backfill.db.schema import COLUMNS, PROVENANCE_COLUMNS
from backfill.stages.merge import MergeSettings, plan_merge, provenance
from backfill.stages.validate import check_accounted
from tests.helpers.merge_rows import decision, frame, row

SETTINGS = MergeSettings(coord_tolerance=0.01, crop_tolerance=0.05)


def names_of(group: int, k: int) -> list[str]:
    """Render names only group ``group`` holds."""
    return [f"2025070{group}_0{i}0000_stage{i + 1}.png" for i in range(k)]


@st.composite
def linked(draw) -> dict:
    """Backfilled groups with names of their own, and live rows each naming some of
    them (none, one or several); the links are the ground truth."""
    n_groups, n_live = draw(st.integers(0, 6)), draw(st.integers(0, 5))
    sizes = [draw(st.integers(1, 3)) for _ in range(n_groups)]
    back = []
    for g in range(n_groups):
        # A backfilled id sometimes equals a live row's id: never written over it.
        row = draw(decision(draw(st.sampled_from([f"p_group_{g}", f"live_{g}"]))))
        row["images"] = json.dumps(names_of(g, sizes[g]))
        if draw(st.integers(0, 5)) == 0:  # a kept final that cannot be read
            row.update(user_action=UNREADABLE, final_crop_coords=None)
        back.append(row)
    live, named = [], []
    for i in range(n_live):
        groups = draw(st.lists(st.integers(0, n_groups - 1), max_size=3, unique=True)
                      if n_groups else st.just([]))
        row = draw(decision(f"live_{i}"))
        names = [draw(st.sampled_from(names_of(g, sizes[g]))) for g in groups]
        row["images"] = json.dumps(names + [f"2025080{i}_000000_stage1.png"])
        live.append(row)
        named.append(groups)
    ids = [r["group_id"] for r in back]
    back = [r for i, r in enumerate(back) if r["group_id"] not in ids[:i]]  # ids unique
    return {"back": pd.DataFrame(back, columns=COLUMNS, dtype=object),
            "live": pd.DataFrame(live, columns=COLUMNS, dtype=object),
            "links": [[ids[g] for g in gs if g < len(ids)] for gs in named]}


def expected_ending(row: pd.Series, data: dict) -> str:
    gid, links = row["group_id"], data["links"]
    rows = [i for i, gs in enumerate(links) if gid in gs]
    if row["user_action"] == UNREADABLE:
        return "reported"
    if not rows:  # a new group: added, unless a live row already has its id
        return "reported" if gid in set(data["live"]["group_id"]) else "added"
    if len(rows) == 1 and len(links[rows[0]]) == 1:
        return "merged"
    return "reported"  # ambiguous: which live row, or which group, cannot be told


def emitted_provenance(plan, back: pd.DataFrame) -> pd.DataFrame:
    """The side table as the merge writes it into the merged DB."""
    prov = pd.DataFrame({c: None for c in PROVENANCE_COLUMNS}, index=range(len(back)))
    prov = prov.assign(group_id=back["group_id"].to_numpy(), source="backfill",
                       backfill_group_id=back["group_id"].to_numpy(), needs_review=False)
    return provenance(plan, prov, set())


def every_shape() -> dict:
    """Live rows naming no group, one, two, and a group two live rows name."""
    links = [[], ["g0"], ["g1", "g2"], ["g3"], ["g3"]]
    back = frame(*(row(g, names_of(i, 2)) for i, g in enumerate(["g0", "g1", "g2", "g3", "g4"])))
    live = frame(*(row(f"live_{i}", [n for g in gs for n in names_of(int(g[1]), 1)]
                       + [f"2025080{i}_000000_stage1.png"]) for i, gs in enumerate(links)))
    return {"back": back.astype(object), "live": live.astype(object), "links": links}


@settings(max_examples=30, deadline=None)
@given(linked())
@example(every_shape())
def test_every_group_ends_merged_added_or_reported_exactly_once(data):
    back, live = data["back"], data["live"]
    plan = plan_merge(back, live, SETTINGS)
    endings = plan.endings(back["group_id"])
    assert (endings.sum(axis=1) == 1).all(), endings
    got = endings.idxmax(axis=1) if len(endings) else pd.Series(dtype=object)
    for _, r in back.iterrows():
        assert got[r["group_id"]] == expected_ending(r, data), r["group_id"]
    # A reported group says why; one left out for an ambiguous live row names that row.
    issues = plan.issues
    for gid in got[got == "reported"].index:
        mine = issues[(issues["group_id"] == gid)
                      & issues["kind"].isin(["ambiguous_group", "final_unreadable",
                                             "id_collision"])]
        assert len(mine) and mine["detail"].str.len().min() > 0
        rows = [f"live_{i}" for i, gs in enumerate(data["links"]) if gid in gs]
        if "ambiguous_group" in set(mine["kind"]):
            detail = " ".join(mine["detail"])
            assert all(r in detail for r in rows), (rows, detail)
    added = set(plan.changes.loc[plan.changes["rule"] == "added", "group_id"])
    assert len(plan.merged) == len(live) + len(added)
    # validate agrees: nothing missing on the merge's own outputs...
    groups = back[["group_id"]]
    prov = emitted_provenance(plan, back)
    assert check_accounted(groups, prov, issues) == []
    # ...and without the merge's reports, exactly the reported groups are missing.
    left_out = sorted(got[got == "reported"].index)
    silent = check_accounted(groups, prov, issues[~issues["group_id"].isin(left_out)])
    assert [(f.check, f.group_ids) for f in silent] == (
        [("groups missing from the DB", left_out)] if left_out else [])
