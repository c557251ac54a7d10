"""pairing: which image of each group the person kept, found in the final folder.

The final folder is searched recursively. Each final is tied to one render of one group
by the first of these that answers (its ``pair_method``, schemas.PAIR_METHODS):

1. name: its file name less the extension is the render's (the person's tools keep the
   render's name; an export to JPEG changes only the extension);
2. identity: the (timestamp, stage) that scan parsed from its name is the render's,
   whatever follows them and whatever the extension: Finder's ``... copy.png`` and
   ``... 2.png``, an editor's ``..._edit.png``, ``... copy.jpg``;
3. content: its bytes are a kept final's (a copy under another name) or a render's (a
   render moved and renamed); else, for a readable final whose name carries no
   identity (``IMG_0412.jpg``, ``export-3.png``), ``by_content`` (content_pairing) finds
   its render among the groups with no kept final yet, verified by locating it. The
   same picture is often rendered again (another seed of the same prompt), so what a
   final shows is no proof: a pairing by pixels is always flagged for review, and a
   final whose name states a render identity that no render has is never paired by
   content (it is another render, one that is gone): it stays an orphan whose reason
   names the render it claims to be and its best content match.
4. reviewed: between the bytes and the search by pixels, a final you assigned to a group
   in `backfill review` (and that names and bytes left unpaired) is claimed for that
   group, at the render its pixels were cut from (``by_answer``); your word stands for
   the group, the location is found as for any other.

Never a guess: a final whose name, identity, bytes or content fits renders of two
groups is paired with neither (an orphan whose reason names them), and both groups are
flagged for review with the reason (unless it is a final named after a render that is
gone: it could be paired with neither anyway). One exception, decided by pixels: a final
named like a **name clash** (one render name in two folders with other pixels,
files.clashes) is the copy whose bytes it has, else the one its pixels match clearly
(``by_pixels``); only when they cannot tell is it an orphan and the groups flagged.

What a group ends up with (README, "How decisions are recovered"):

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
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from backfill.contracts.schemas import PAIR_METHODS, FinalsTable
from backfill.contracts.tables import typed_frame
from backfill.db.cells import comparable_name
from backfill.files.clashes import shared_names
from backfill.files.imageinfo import no_signature

# The columns of one pair, with their dtypes: a group and what the final folder says
# about it. ``unreadable``: why the kept final (or its original) cannot be read;
# ``unreadable_members``: the group's other renders that cannot be read, and why.
PAIR_DTYPES = {
    "group_id": "str", "user_selected_index": "Int64", "kept_stage": "float64",
    "original_path": "str", "original_hash": "str", "original_width": "Int64",
    "original_height": "Int64", "final_path": "str", "final_hash": "str",
    "final_mtime_ns": "Int64", "final_copies": "int64", "pair_method": "str", "review": "str",
    "unreadable": "str", "unreadable_members": "str",
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
    # Finals named like a name clash, left for their pixels to decide: rel_path ->
    # (the clashing name, how the name fits: name or identity).
    clashing: dict[str, tuple[str, str]] = field(default_factory=dict)

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


# (readable unpaired finals, renders of the groups with no kept final, the finals among
# them whose names state a render identity: matched for their reason, never claimed)
# -> outcome.
ContentPairer = Callable[[pd.DataFrame, pd.DataFrame, frozenset[str]], ContentOutcome]
# Why a group's kept final found by pixels alone needs a person's look.
BY_CONTENT = ("{rel} was paired by its content alone (no name or identical bytes tie it "
              "to a render; the same picture may have been rendered again): check it is "
              "this group's image")
# Finals named like a name clash, one row per (final, copy of the name): final rel_path
# and final_hash, the copy's original_path, original_hash, group_id and index (empty
# and -1 for a copy in no group) -> final -> (the copy its pixels clearly match, or
# None; what the pixels said).
PixelChooser = Callable[[pd.DataFrame], dict[str, tuple[str | None, str]]]
# Finals you assigned to a group in review, one row per (final, readable render of its
# group): rel_path, final_hash, group_id, index, original_hash, original_path -> final
# -> (the index it was cut from, or None; a review note, or why none).
GroupChooser = Callable[[pd.DataFrame], dict[str, tuple[int | None, str | None]]]


def stem(name: str) -> str:
    """A file name without its extension: what a final shares with its render."""
    return os.path.splitext(name)[0]


def stated_render(timestamp: object, stage: object) -> tuple[str, float] | None:
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


def name_key(case_sensitive: bool) -> Callable[[str], str]:
    """How this project compares file names: accents composed, case aside unless
    ``case_sensitive`` (names.case_sensitive)."""
    return lambda name: comparable_name(name, case_sensitive)


def clash_copies(originals: pd.DataFrame, renders: pd.DataFrame,
                 case_sensitive: bool = True) -> pd.DataFrame:
    """Every copy of a clashing render name (``originals``: scan's, by rel_path): name
    (in its comparable form, name_key), original_path, original_hash (null when
    unreadable), and its group_id and index (empty and -1 when it is in no group).
    Renders as group takes them: a file with no image signature is none."""
    named = originals[(originals["ext"] != "") & originals["timestamp"].notna()
                      & (originals["stage"] > 0)
                      & ~originals["reason"].map(no_signature).astype(bool)]
    key = name_key(case_sensitive)
    _, clashes = shared_names(named.reset_index(), key)
    rows = originals.reindex(sorted(clashes))
    place = renders.set_index("original_path").reindex(rows.index)
    readable = (rows["status"] != "error").to_numpy()
    return pd.DataFrame({
        "name": rows["name"].map(key).to_numpy(), "original_path": rows.index.to_numpy(),
        "original_hash": rows["content_hash"].where(readable, None).to_numpy(),
        "group_id": place["group_id"].fillna("").to_numpy(),
        "index": place["index"].fillna(-1).astype("int64").to_numpy(),
    }).astype({"name": "str", "original_path": "str", "group_id": "str"})


def _clash(found: list[tuple[str, int]], names: dict[tuple[str, int], str],
           clashing: set[str]) -> str | None:
    """The clashing name all ``found`` renders bear, if they bear one."""
    held = {names[f] for f in found}
    return next(iter(held)) if len(held) == 1 and held <= clashing else None


def claim_by_name(finals: pd.DataFrame, renders: pd.DataFrame, ungrouped: pd.DataFrame,
                  clashing: set[str] = frozenset(), case_sensitive: bool = True) -> Pairing:
    """Passes 1 and 2: each final by its name, else by the identity in its name. Names
    are compared in their comparable form (name_key). A final whose name or identity
    fits only renders of one ``clashing`` name (comparable form) is left for its pixels
    to decide (``Pairing.clashing``)."""
    compare = name_key(case_sensitive)

    def key(name: str) -> str:
        return stem(compare(name))

    at = list(zip(renders["group_id"], renders["index"], strict=True))
    names = dict(zip(at, renders["name"].map(compare), strict=True))
    by_stem = _index(renders["name"].map(key), at)
    by_identity = _index(map(stated_render, renders["timestamp"], renders["stage"]), at)
    lone_stem = dict(zip(ungrouped["name"].map(key), ungrouped["reason"], strict=True))
    lone_identity = {stated_render(t, s): (n, r) for t, s, n, r in zip(
        ungrouped["timestamp"], ungrouped["stage"], ungrouped["name"], ungrouped["reason"],
        strict=True)}
    out = Pairing()
    for f in finals.itertuples(index=False):
        name, ident = key(f.name), stated_render(f.timestamp, f.stage)
        for method, found in (("name", by_stem.get(name, [])),
                              ("identity", by_identity.get(ident, []) if ident else [])):
            clash = _clash(found, names, clashing) if found else None
            if clash is not None:
                out.clashing[f.rel_path] = clash, method
                break
            if out.claim(f.rel_path, found, method,
                         "name" if method == "name" else "timestamp and stage"):
                break
        if f.rel_path in out.claims or f.rel_path in out.clashing or f.rel_path in out.settled:
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


def claim_clashes(finals: pd.DataFrame, copies: pd.DataFrame, pairing: Pairing,
                  by_pixels: PixelChooser | None) -> None:
    """Each final named like a name clash: the copy with its bytes, else the one its
    pixels clearly match (``by_pixels``). A copy in a group is claimed; one in no group
    makes the final an orphan with the reason; when nothing tells, it is an orphan and
    every group holding a copy is flagged."""
    if not pairing.clashing:
        return
    rows = finals.set_index("rel_path")
    jobs = pd.DataFrame([
        {"rel_path": rel, "final_hash": rows.at[rel, "content_hash"], **c}
        for rel, (name, _) in pairing.clashing.items()
        if rows.at[rel, "status"] != "error"
        for c in copies[copies["name"] == name].drop(columns="name").to_dict("records")],
        columns=["rel_path", "final_hash", "original_path", "original_hash", "group_id",
                 "index"])
    same = jobs[jobs["final_hash"] == jobs["original_hash"]].drop_duplicates("rel_path")
    chosen = {r: (p, "the same bytes") for r, p in zip(same["rel_path"],
                                                        same["original_path"], strict=True)}
    rest = jobs[~jobs["rel_path"].isin(chosen) & jobs["original_hash"].notna()]
    if by_pixels is not None and len(rest):
        chosen.update(by_pixels(rest))
    place = copies.set_index("original_path")
    for rel, (name, method) in pairing.clashing.items():
        mine = copies[copies["name"] == name]
        pick, said = chosen.get(rel, (None, "its pixels were not compared" if
                                      rows.at[rel, "status"] != "error" else "it cannot be read"))
        if pick is not None and place.at[pick, "group_id"]:
            pairing.claims[rel] = Claim(rel, place.at[pick, "group_id"],
                                        int(place.at[pick, "index"]), method)
            continue
        pairing.settled.add(rel)
        if pick is not None:
            pairing.reasons[rel] = (f"its original ({pick}, by {said}; {name} is a name "
                                    "clash) is in no group")
            continue
        folders = ", ".join(mine["original_path"])
        pairing.reasons[rel] = (f"its {method} fits {name}, a name clash ({folders}), and "
                                f"{said}: paired with none")
        groups = sorted(g for g in set(mine["group_id"]) if g)
        for g in groups:
            pairing.reviews[g].append(
                f"{rel} is named like {name}, a name clash ({folders}), and {said}: not "
                "paired (check which render it shows)")


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


def claim_by_answer(finals: pd.DataFrame, renders: pd.DataFrame, pairing: Pairing,
                    assigned: Mapping[str, str], by_answer: GroupChooser) -> None:
    """Your word, before any guess by content: each final you assigned to a group in
    review (``assigned``: rel_path -> group) that no name or bytes tie to one is claimed
    for that group ('reviewed'), at the render its pixels were cut from. One that
    matches none of the group's renders stays an orphan, saying so."""
    readable = set(finals.loc[finals["status"] != "error", "rel_path"])
    todo = {rel: g for rel, g in assigned.items()
            if rel in readable and rel not in pairing.claims}
    hashes = dict(zip(finals["rel_path"], finals["content_hash"], strict=True))
    known = set(renders["group_id"])
    mine = renders[renders["group_id"].isin(set(todo.values())) & renders["content_hash"].notna()]
    jobs = pd.DataFrame([
        {"rel_path": rel, "final_hash": hashes[rel], "group_id": g, "index": int(r.index),
         "original_hash": r.content_hash, "original_path": r.original_path}
        for rel, g in todo.items() for r in mine[mine["group_id"] == g].itertuples()],
        columns=["rel_path", "final_hash", "group_id", "index", "original_hash",
                 "original_path"])
    chosen = by_answer(jobs) if len(jobs) else {}
    for rel, g in todo.items():
        index, note = chosen.get(rel, (None, f"no render of {g} can be read" if g in known
                                       else f"there is no group {g} any more"))
        if index is None:
            pairing.reasons[rel] = f"you assigned it to {g} in review, but {note}"
            pairing.settled.add(rel)
            continue
        pairing.settled.discard(rel)
        pairing.claims[rel] = Claim(rel, g, index, "reviewed")
        if note:
            pairing.reviews[g].append(f"{rel}: {note}")


def add_content(pairing: Pairing, outcome: ContentOutcome,
                named: dict[str, tuple[str, float]]) -> None:
    """Pass 3's search by pixels, added to what the names said: every claim is flagged
    for review, and a final whose name states a render identity (``named``) is never
    claimed, only told what it matched."""
    for c in outcome.claims:
        if c.rel_path in named:  # the pairer only reports what these match
            continue
        pairing.claims[c.rel_path] = c
        pairing.reviews[c.group_id].append(BY_CONTENT.format(rel=c.rel_path))
    for rel, (timestamp, stage) in named.items():
        pairing.reasons[rel] = "; ".join(filter(None, [
            pairing.reasons.get(rel), f"its name claims render {timestamp} stage {stage:g}, "
            "so it is never paired by content (another render of the same picture looks "
            "alike)"]))
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


def _members_note(group, originals: pd.DataFrame, kept: int | None) -> str | None:
    """The group's renders that cannot be read, but the kept one (its own reason says
    so), with why: a decision that stands on the others is flagged with this."""
    unreadable = set(group.unreadable)
    broken = [p for i, p in enumerate(group.image_paths) if p in unreadable and i != kept]
    if not broken:
        return None
    return "unreadable renders in the group: " + "; ".join(
        f"{p} ({originals.loc[p, 'reason']})" for p in broken)


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
        kept = sorted({c.index for c in claims})
        index = kept[-1] if kept else None  # stages ascend: the last kept is the highest
        pair["unreadable_members"] = _members_note(g, originals, index)
        if not claims:
            pair["review"] = "; ".join(reviews) or None
            pairs.append(pair)
            continue
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
                by_content: ContentPairer | None = None, by_pixels: PixelChooser | None = None,
                case_sensitive: bool = True, assigned: Mapping[str, str] | None = None,
                by_answer: GroupChooser | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pair per group (the final is empty for a rejected group) and a row per final
    file saying what it is: kept, copy, extra (another kept image of a group) or orphan.

    ``by_content`` pairs the readable finals that neither names nor bytes tied to a
    group and whose names state no render identity; without it they stay orphans.
    ``by_pixels`` tells which copy of a clashing name a final shows; without it only the
    same bytes do. ``assigned`` finals (rel_path -> group: your answers in review) are
    claimed for their group where ``by_answer`` finds the render they were cut from."""
    finals = _final_rows(scan)
    originals = scan[scan["source"] == "original"].set_index("rel_path")
    renders = render_rows(groups, originals)
    copies = clash_copies(originals, renders, case_sensitive)
    pairing = claim_by_name(finals, renders, ungrouped, set(copies["name"]), case_sensitive)
    claim_clashes(finals, copies, pairing, by_pixels)
    claim_by_bytes(finals, renders, pairing)
    if assigned and by_answer is not None:
        claim_by_answer(finals, renders, pairing, assigned, by_answer)
    if by_content is not None:
        unpaired = finals[~finals["rel_path"].isin(pairing.claims)
                          & ~finals["rel_path"].isin(pairing.settled)
                          & (finals["status"] != "error")]
        decided = {c.group_id for c in pairing.claims.values()}
        named = {rel: ident for rel, ident in zip(unpaired["rel_path"], map(
            stated_render, unpaired["timestamp"], unpaired["stage"]), strict=True) if ident}
        if len(unpaired):
            add_content(pairing, by_content(unpaired, renders[
                ~renders["group_id"].isin(decided) & renders["content_hash"].notna()],
                frozenset(named)), named)
    return assemble(groups, finals, originals, pairing)
