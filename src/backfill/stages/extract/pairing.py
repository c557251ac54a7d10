"""pairing: which image of each group the person kept, found in the final folder.

The final folder is searched recursively. Each final is tied to one render of one group
by the first of these that answers (its ``pair_method``, schemas.PAIR_METHODS):

1. name: its file name less the extension is the render's (the person's tools keep the
   render's name; an export to JPEG changes only the extension);
2. identity: the (timestamp, stage) that scan parsed from its name is the render's,
   whatever follows them and whatever the extension: Finder's ``... copy.png`` and
   ``... 2.png``, an editor's ``..._edit.png``, ``... copy.jpg``;
3. content: its bytes are a kept final's (a copy under another name) or a render's (a
   render moved and renamed); else, for a readable final whose name carries no usable
   identity (``IMG_0412.jpg``, ``export-3.png``) or one that matches no render,
   ``by_content`` (content_pairing) finds its render among the groups with no kept
   final yet, verified by locating it.

Never a guess: a final whose name, identity, bytes or content fits renders of two
groups is paired with neither (an orphan whose reason names them), and both groups are
flagged for review with the reason. What a group ends up with (README, "How decisions
are recovered"):

- nothing: the group was rejected;
- several files of one render (one name in several subfolders, a Finder copy, an
  export): one decision. Files with the same content are just reported as copies;
  files that differ are flagged for review and the most recently modified is taken
  (the person's latest edit); among equal ones, the best-named (name, then identity,
  then content; then path) stands for the decision;
- two different renders of the group kept: flagged, the highest stage taken (the most
  finished render, as the reviewer sees it last);
- a final paired with no group: an orphan, with the reason;
- a kept final, or its original, that cannot be read (scan's status 'error'): still the
  person's pick, with the reason in ``unreadable`` (the box cannot be known).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from backfill.contracts.schemas import PAIR_METHODS, FinalsTable
from backfill.contracts.tables import typed_frame
from backfill.db.cells import comparable_name

# The columns of one pair, with their dtypes: a group and what the final folder says
# about it. ``unreadable``: why the kept final (or its original) cannot be read.
PAIR_DTYPES = {
    "group_id": "str", "user_selected_index": "Int64", "kept_stage": "float64",
    "original_path": "str", "original_hash": "str", "original_width": "Int64",
    "original_height": "Int64", "final_path": "str", "final_hash": "str",
    "final_mtime_ns": "Int64", "final_copies": "int64", "pair_method": "str", "review": "str",
    "unreadable": "str",
}
PAIR_COLUMNS = list(PAIR_DTYPES)
NO_RENDER = "no original render has this name"


class Claim(NamedTuple):
    """A final tied to one render (``index``) of one group, and how."""

    rel_path: str
    group_id: str
    index: int
    method: str  # PAIR_METHODS


@dataclass
class Pairing:
    """What the final folder says so far: claims by final, why the unclaimed ones are not
    paired, which of those must not be paired by content either (``settled``: their
    source is known, or ambiguous), and review notes by group."""

    claims: dict[str, Claim] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    reviews: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def ambiguous(self, rel_path: str, groups: list[str], by: str) -> None:
        """``rel_path`` fits renders of several ``groups`` ``by`` one way: pair none."""
        self.reasons[rel_path] = (f"its {by} fits renders of {len(groups)} groups "
                                  f"({', '.join(groups)}): paired with none")
        self.settled.add(rel_path)
        for g in groups:
            others = ", ".join(o for o in groups if o != g)
            self.reviews[g].append(f"{rel_path} fits this group and {others} by its {by}: "
                                   "not paired (check which group it belongs to)")

    def claim(self, rel_path: str, found: list[tuple[str, int]], method: str, by: str
              ) -> bool:
        """Claim the one group among ``found`` (group, index) renders; False when there
        is none, and an ambiguity when there are several groups."""
        groups = sorted({g for g, _ in found})
        if not groups:
            return False
        if len(groups) > 1:
            self.ambiguous(rel_path, groups, by)
        else:
            self.claims[rel_path] = Claim(rel_path, groups[0], max(i for _, i in found),
                                          method)
        return True


@dataclass
class ContentOutcome:
    """What content pairing made of the finals it was given: claims, why the others stay
    orphans, and review notes by group."""

    claims: list[Claim]
    reasons: dict[str, str]
    reviews: dict[str, list[str]]


# (readable unpaired finals, renders of the groups with no kept final) -> outcome.
ContentPairer = Callable[[pd.DataFrame, pd.DataFrame], ContentOutcome]


def stem(name: str) -> str:
    """A file name without its extension: what a final shares with its render."""
    return os.path.splitext(name)[0]


def identity(timestamp: object, stage: object) -> tuple[str, float] | None:
    """A render's identity as its name states it, or None when the name has none (no
    timestamp, or stage 0.0: scan's value for a name without a stage)."""
    if not isinstance(timestamp, str) or pd.isna(stage) or float(stage) <= 0:
        return None
    return timestamp, float(stage)


def _final_rows(scan: pd.DataFrame) -> pd.DataFrame:
    finals = scan[(scan["source"] == "final") & (scan["ext"] != "")]
    return finals.sort_values("rel_path", kind="stable")


def render_rows(groups: pd.DataFrame, originals: pd.DataFrame) -> pd.DataFrame:
    """One row per member of each group: its place, name, identity and content hash
    (null when it cannot be read)."""
    rows = [(g.group_id, i, path, name) for g in groups.itertuples(index=False)
            for i, (path, name) in enumerate(zip(g.image_paths, g.image_names, strict=True))]
    out = pd.DataFrame(rows, columns=["group_id", "index", "original_path", "name"])
    facts = originals.reindex(out["original_path"])
    readable = (facts["status"] != "error").to_numpy()
    return out.assign(
        stem=out["name"].map(stem), timestamp=facts["timestamp"].to_numpy(),
        stage=facts["stage"].to_numpy(),
        content_hash=facts["content_hash"].where(readable, None).to_numpy())


def _index(keys: Iterable[Hashable], values: Iterable[tuple[str, int]]
           ) -> dict[Hashable, list[tuple[str, int]]]:
    out: dict[Hashable, list[tuple[str, int]]] = defaultdict(list)
    for key, value in zip(keys, values, strict=True):
        if key is not None and not (isinstance(key, float) and pd.isna(key)):
            out[key].append(value)
    return out


def claim_by_name(finals: pd.DataFrame, renders: pd.DataFrame, ungrouped: pd.DataFrame,
                  case_sensitive: bool = True) -> Pairing:
    """Passes 1 and 2: each final by its name, else by the identity in its name. Names
    are compared in their comparable form (accents composed; case aside unless
    ``case_sensitive``)."""
    def key(name: str) -> str:
        return stem(comparable_name(name, case_sensitive))

    at = list(zip(renders["group_id"], renders["index"], strict=True))
    by_stem = _index(renders["name"].map(key), at)
    by_identity = _index(map(identity, renders["timestamp"], renders["stage"]), at)
    lone_stem = dict(zip(ungrouped["name"].map(key), ungrouped["reason"], strict=True))
    lone_identity = {identity(t, s): (n, r) for t, s, n, r in zip(
        ungrouped["timestamp"], ungrouped["stage"], ungrouped["name"], ungrouped["reason"],
        strict=True)}
    out = Pairing()
    for f in finals.itertuples(index=False):
        name, ident = key(f.name), identity(f.timestamp, f.stage)
        if out.claim(f.rel_path, by_stem.get(name, []), "name", "name"):
            continue
        if ident and out.claim(f.rel_path, by_identity.get(ident, []), "identity",
                               "timestamp and stage"):
            continue
        if name in lone_stem:  # its source is known: not a group's decision
            out.reasons[f.rel_path] = f"its original is in no group ({lone_stem[name]})"
            out.settled.add(f.rel_path)
        elif ident is not None and ident in lone_identity:
            lone, why = lone_identity[ident]
            out.reasons[f.rel_path] = f"its original ({lone}) is in no group ({why})"
            out.settled.add(f.rel_path)
        else:
            out.reasons[f.rel_path] = NO_RENDER + (", timestamp and stage" if ident else "")
    return out


def claim_by_bytes(finals: pd.DataFrame, renders: pd.DataFrame, pairing: Pairing) -> None:
    """Pass 3's certain part, with no pixels decoded: a final with the bytes of a kept
    final is a copy of it; one with the bytes of a render is that render."""
    readable = finals[finals["status"] != "error"]
    hashes = dict(zip(readable["rel_path"], readable["content_hash"], strict=True))
    kept = _index((hashes.get(c.rel_path) for c in pairing.claims.values()),
                  ((c.group_id, c.index) for c in pairing.claims.values()))
    rendered = _index(renders["content_hash"],
                      zip(renders["group_id"], renders["index"], strict=True))
    for rel, content in hashes.items():
        if rel in pairing.claims or rel in pairing.settled:
            continue
        if not pairing.claim(rel, kept.get(content, []), "content", "content (same bytes)"):
            pairing.claim(rel, rendered.get(content, []), "content", "content (same bytes)")


def add_content(pairing: Pairing, outcome: ContentOutcome) -> None:
    """Pass 3's search by pixels, added to what the names said."""
    for c in outcome.claims:
        pairing.claims[c.rel_path] = c
    for rel, why in outcome.reasons.items():
        pairing.reasons[rel] = "; ".join(filter(None, [pairing.reasons.get(rel), why]))
    for group_id, notes in outcome.reviews.items():
        pairing.reviews[group_id].extend(notes)


def _pick_copy(copies: pd.DataFrame) -> tuple[pd.Series, str | None]:
    """The file that stands for the decision, and why the choice needs review (if it
    does). ``copies`` come best-named first."""
    readable = copies[copies["status"] != "error"]
    if readable.empty:
        return copies.iloc[0], None
    distinct = readable["content_hash"].nunique()
    if distinct == 1:
        return readable.iloc[0], None
    latest = readable.sort_values(["mtime_ns", "rel_path"], kind="stable").iloc[-1]
    return latest, (
        f"{len(readable)} files of this image ({', '.join(readable['rel_path'])}) differ "
        f"in content, the latest ({latest['rel_path']}) is taken"
    )


def assemble(groups: pd.DataFrame, finals: pd.DataFrame, originals: pd.DataFrame,
             pairing: Pairing) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pair per group from the claims, and a row per final saying what it is."""
    rows = finals.set_index(finals["rel_path"].to_numpy())  # and keep the column
    by_group: dict[str, list[Claim]] = defaultdict(list)
    for c in pairing.claims.values():
        by_group[c.group_id].append(c)
    rank = {m: k for k, m in enumerate(PAIR_METHODS)}
    roles: dict[str, tuple[str, str, str, str | None]] = {}  # rel: role, group, method, why
    pairs = []
    for g in groups.itertuples(index=False):
        claims = sorted(by_group.get(g.group_id, []), key=lambda c: (rank[c.method], c.rel_path))
        pair = dict.fromkeys(PAIR_COLUMNS)
        pair.update(group_id=g.group_id, final_copies=0)
        reviews = list(pairing.reviews.get(g.group_id, []))
        if not claims:
            pair["review"] = "; ".join(reviews) or None
            pairs.append(pair)
            continue
        kept = sorted({c.index for c in claims})
        index = kept[-1]  # stages ascend within a group: the last kept is the highest
        if len(kept) > 1:
            reviews.append(
                f"{len(kept)} images of this group are in the final folder (indexes "
                f"{', '.join(map(str, kept))}), the highest stage, index {index}, is taken")
            for c in claims:
                if c.index != index:
                    roles[c.rel_path] = ("extra", g.group_id, c.method,
                                         f"also kept from {g.group_id}; index {index} is taken")
        chosen = [c for c in claims if c.index == index]
        copies = rows.loc[[c.rel_path for c in chosen]]
        final, why = _pick_copy(copies)
        if why:
            reviews.append(why)
        method = {c.rel_path: c.method for c in chosen}
        for rel, content in zip(copies["rel_path"], copies["content_hash"], strict=True):
            if rel != final["rel_path"]:
                same = content == final["content_hash"] and pd.notna(content)
                roles[rel] = ("copy", g.group_id, method[rel],
                              f"{'same content as' if same else 'differs from'} "
                              f"{final['rel_path']}")
        roles[final["rel_path"]] = ("kept", g.group_id, method[final["rel_path"]], None)
        original = originals.loc[g.image_paths[index]]
        unreadable = [f"{role} unreadable: {row['reason']}" for role, row
                      in (("final", final), ("original", original)) if row["status"] == "error"]
        pair.update(
            user_selected_index=index,
            kept_stage=g.stages[index],
            original_path=g.image_paths[index],
            original_hash=original["content_hash"] if original["status"] != "error" else None,
            original_width=original["width"],
            original_height=original["height"],
            final_path=final["rel_path"],
            final_hash=final["content_hash"] if final["status"] != "error" else None,
            final_mtime_ns=final["mtime_ns"],
            final_copies=len(copies) - 1,
            pair_method=method[final["rel_path"]],
            review="; ".join(reviews) or None,
            unreadable="; ".join(unreadable) or None,
        )
        pairs.append(pair)

    report = []
    for f in finals.itertuples(index=False):
        role, group_id, method, why = roles.get(
            f.rel_path, ("orphan", None, None, pairing.reasons.get(f.rel_path, NO_RENDER)))
        if f.status == "error":
            why = "; ".join(filter(None, [why, f"unreadable: {f.reason}"]))
        report.append({"rel_path": f.rel_path, "name": f.name, "role": role,
                       "group_id": group_id, "pair_method": method,
                       "content_hash": f.content_hash, "reason": why})
    pairs_df = pd.DataFrame.from_records(pairs, columns=PAIR_COLUMNS).astype(PAIR_DTYPES)
    return pairs_df, typed_frame(FinalsTable, report)


def pair_finals(groups: pd.DataFrame, scan: pd.DataFrame, ungrouped: pd.DataFrame,
                by_content: ContentPairer | None = None, case_sensitive: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pair per group (the final is empty for a rejected group) and a row per final
    file saying what it is: kept, copy, extra (another kept image of a group) or orphan.

    ``by_content`` pairs the readable finals that neither names nor bytes tied to a
    group; without it they stay orphans."""
    finals = _final_rows(scan)
    originals = scan[scan["source"] == "original"].set_index("rel_path")
    renders = render_rows(groups, originals)
    pairing = claim_by_name(finals, renders, ungrouped, case_sensitive)
    claim_by_bytes(finals, renders, pairing)
    if by_content is not None:
        unpaired = finals[~finals["rel_path"].isin(pairing.claims)
                          & ~finals["rel_path"].isin(pairing.settled)
                          & (finals["status"] != "error")]
        decided = {c.group_id for c in pairing.claims.values()}
        if len(unpaired):
            add_content(pairing, by_content(unpaired, renders[
                ~renders["group_id"].isin(decided) & renders["content_hash"].notna()]))
    return assemble(groups, finals, originals, pairing)
