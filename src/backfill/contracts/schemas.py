"""Every table's contract, in one place.

Each stage validates what it writes (lazy: every failure reported at once), so a bad row
stops the pipeline where it was made, with the table, column and values named.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from backfill.db.schema import ACTIONS, MAX_IMAGES
from backfill.db.schema import COLUMNS as DECISION_COLUMNS

HASH_PATTERN = r"^[0-9a-f]{64}$"
TIMESTAMP_PATTERN = r"^\d{8}_\d{6}$"
STATUSES = ["ok", "warning", "error"]
SOURCES = ["original", "final"]


class ScanTable(pa.DataFrameModel):
    """One row per image file (or unreadable folder) under original_dir and final_dir."""

    source: Series[str] = pa.Field(isin=SOURCES, description="which root the file is under")
    rel_path: Series[str] = pa.Field(description="POSIX path relative to its root")
    name: Series[str]
    ext: Series[str] = pa.Field(description="lower-case extension, '' for a folder row")
    size_bytes: Series[int] = pa.Field(ge=0)
    mtime_ns: Series[int]
    format: Series[str] = pa.Field(nullable=True, description="format read from the bytes")
    width: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    height: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    mode: Series[str] = pa.Field(nullable=True, description="PIL mode, e.g. RGB, RGBA, I;16")
    content_hash: Series[str] = pa.Field(nullable=True, str_matches=HASH_PATTERN)
    timestamp: Series[str] = pa.Field(nullable=True, str_matches=TIMESTAMP_PATTERN)
    stage: Series[float] = pa.Field(ge=0, description="0.0 when the name has no stage")
    stage_label: Series[str] = pa.Field(nullable=True)
    status: Series[str] = pa.Field(isin=STATUSES)
    reason: Series[str] = pa.Field(nullable=True)

    @pa.dataframe_check
    def reason_explains_status(cls, df: pd.DataFrame) -> Series[bool]:
        """A row that is not 'ok' says why; an 'ok' row has nothing to say."""
        return (df["status"] == "ok") == df["reason"].isna()

    @pa.dataframe_check
    def usable_rows_are_hashed(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["status"] == "error") | (
            df["content_hash"].notna() & df["width"].notna() & df["height"].notna()
        )

    class Config:
        strict = True
        unique = ["source", "rel_path"]


class GroupsTable(pa.DataFrameModel):
    """One row per group of renders of one image, stages ascending."""

    group_id: Series[str] = pa.Field(unique=True)
    first_timestamp: Series[str] = pa.Field(str_matches=TIMESTAMP_PATTERN)
    last_timestamp: Series[str] = pa.Field(str_matches=TIMESTAMP_PATTERN)
    n_images: Series[int] = pa.Field(ge=2, le=MAX_IMAGES)
    image_paths: Series[object] = pa.Field(description="rel_paths under original_dir")
    image_names: Series[object]
    stages: Series[object]
    widths: Series[object] = pa.Field(description="null for an unreadable member")
    heights: Series[object]
    content_hashes: Series[object]
    unreadable: Series[object] = pa.Field(description="rel_paths of members that cannot be read")

    @pa.dataframe_check
    def lists_match_size(cls, df: pd.DataFrame) -> Series[bool]:
        cols = ["image_paths", "image_names", "stages", "widths", "heights", "content_hashes"]
        return pd.concat([df[c].map(len) == df["n_images"] for c in cols], axis=1).all(axis=1)

    @pa.check("stages")
    def stages_increase(cls, stages: Series[object]) -> Series[bool]:
        return stages.map(lambda s: all(a < b for a, b in zip(s[:-1], s[1:], strict=True)))

    class Config:
        strict = True


class UngroupedTable(pa.DataFrameModel):
    """Every original file that is in no group, and why."""

    rel_path: Series[str] = pa.Field(unique=True)
    name: Series[str]
    timestamp: Series[str] = pa.Field(nullable=True, str_matches=TIMESTAMP_PATTERN)
    stage: Series[float] = pa.Field(ge=0)
    reason: Series[str]

    class Config:
        strict = True


# The truth may also say that the person kept an image (its name pairs it with a group
# member) whose file cannot be read, so the box is unknown: such a group is not written
# to ai_decisions (the DB's CHECKs allow only ACTIONS), but reported by the merge as
# final_unreadable, and recovered on the run after the file is fixed.
UNREADABLE = "unreadable"
# Likewise a group with no kept image but unreadable renders: the person may have kept
# nothing because they could not see one, or a render kept since was lost; the files
# cannot tell, so it is no 'reject'. Reported by the merge as broken_reject, never written.
BROKEN_REJECT = "broken_reject"
TRUTH_ACTIONS = [*ACTIONS, UNREADABLE, BROKEN_REJECT]
NOTHING_KEPT = ["reject", BROKEN_REJECT]  # the truth actions with no kept image
# Truth actions that are no decision the DB can hold, and the merge issue each is.
HELD = {UNREADABLE: "final_unreadable", BROKEN_REJECT: "broken_reject"}
CROP_BOX = ["crop_x1", "crop_y1", "crop_x2", "crop_y2"]  # the truth's box, normalised
# An approve's box: the whole render, exactly, as the backfill guide's check requires.
FULL_FRAME = (0.0, 0.0, 1.0, 1.0)
# How a kept final was tied to its group, tried in this order: its file name less the
# extension is a render's ('name'); the (timestamp, stage) parsed from its name is a
# render's, whatever the suffix or extension ('identity'); its pixels are found in a
# render ('content': a nameless export, or an identity that matches no render); or
# your answer in `backfill review` put a final with no group in one ('reviewed').
PAIR_METHODS = ["name", "identity", "content", "reviewed"]
# Who decided a truth row: the files ('files'), or you, answering its case in
# `backfill review` ('reviewed', applied from reviews/<project>.jsonl).
DECIDED_BY = ["files", "reviewed"]
ISO_UTC_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"


class TruthTable(pa.DataFrameModel):
    """One row per group: what the person decided, as recovered from the final folder."""

    group_id: Series[str] = pa.Field(unique=True)
    user_action: Series[str] = pa.Field(isin=TRUTH_ACTIONS)
    user_selected_index: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, lt=MAX_IMAGES, description="index of the kept image; null: reject")
    kept_stage: Series[float] = pa.Field(nullable=True)
    original_path: Series[str] = pa.Field(nullable=True, description="the kept render")
    original_width: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    original_height: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    final_path: Series[str] = pa.Field(nullable=True, description="rel_path under final_dir")
    final_copies: Series[int] = pa.Field(ge=0, description="other copies of the final")
    crop_x1: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    crop_y1: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    crop_x2: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    crop_y2: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    scale: Series[float] = pa.Field(nullable=True, gt=0, description="final px per original px")
    confidence: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    support: Series[float] = pa.Field(
        nullable=True, ge=0, le=1, description="share of patches confirmed at full resolution")
    pair_method: Series[str] = pa.Field(
        nullable=True, isin=PAIR_METHODS, description="how the kept final was paired")
    match_method: Series[str] = pa.Field(
        nullable=True, isin=["1:1", "multi-scale", "identical"],
        description="how the kept final was located in its render")
    needs_review: Series[bool]
    review_reason: Series[str] = pa.Field(nullable=True)
    final_modified_at: Series[str] = pa.Field(nullable=True, str_matches=ISO_UTC_PATTERN)
    crop_timestamp: Series[str] = pa.Field(nullable=True, str_matches=ISO_UTC_PATTERN)
    decided_by: Series[str] = pa.Field(isin=DECIDED_BY)
    reviewed_at: Series[str] = pa.Field(
        nullable=True, str_matches=ISO_UTC_PATTERN, description="when you answered its case")

    @pa.dataframe_check
    def reviewed_says_when(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["decided_by"] == "reviewed") == df["reviewed_at"].notna()

    @pa.dataframe_check
    def reject_keeps_nothing(cls, df: pd.DataFrame) -> Series[bool]:
        return df["user_action"].isin(NOTHING_KEPT) == df["user_selected_index"].isna()

    @pa.dataframe_check
    def reject_pairs_nothing(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["user_action"].isin(NOTHING_KEPT) | df["pair_method"].isna()

    @pa.dataframe_check
    def broken_reject_is_flagged(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["user_action"] != BROKEN_REJECT) | df["needs_review"]

    @pa.dataframe_check
    def boxes_are_ordered(cls, df: pd.DataFrame) -> Series[bool]:
        box = df[CROP_BOX]
        ordered = (box["crop_x1"] < box["crop_x2"]) & (box["crop_y1"] < box["crop_y2"])
        return box.isna().any(axis=1) | ordered

    @pa.dataframe_check
    def approve_has_a_box(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["user_action"] != "approve") | df["crop_x1"].notna()

    @pa.dataframe_check
    def review_is_explained(cls, df: pd.DataFrame) -> Series[bool]:
        return df["needs_review"] == df["review_reason"].notna()

    @pa.dataframe_check
    def unreadable_has_no_box(cls, df: pd.DataFrame) -> Series[bool]:
        """An unreadable final gives no box and is always flagged, with the reason."""
        unreadable = df["user_action"] == UNREADABLE
        return ~unreadable | (df["crop_x1"].isna() & df["needs_review"])

    class Config:
        strict = True


FINAL_ROLES = ["kept", "copy", "extra", "orphan", "foreign"]
UNPAIRED = ["orphan", "foreign"]  # the roles of finals tied to no group


class FinalsTable(pa.DataFrameModel):
    """Every file in final_dir and what it is to the decisions."""

    rel_path: Series[str] = pa.Field(unique=True)
    name: Series[str]
    role: Series[str] = pa.Field(
        isin=FINAL_ROLES,
        description="kept: a group's decision; copy: another file of that same kept image "
                    "(same name elsewhere, a renamed copy or export); extra: another image "
                    "of a group that has a kept one; orphan: paired with no group; "
                    "foreign: paired with no group, and you answered in review that it is "
                    "not from this project (or not its group's decision)")
    group_id: Series[str] = pa.Field(nullable=True)
    pair_method: Series[str] = pa.Field(
        nullable=True, isin=PAIR_METHODS, description="how it was tied to its group")
    content_hash: Series[str] = pa.Field(nullable=True, str_matches=HASH_PATTERN)
    reason: Series[str] = pa.Field(nullable=True)

    @pa.dataframe_check
    def orphans_say_why(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["role"].isin(UNPAIRED) | df["reason"].notna()

    @pa.dataframe_check
    def only_orphans_are_unpaired(cls, df: pd.DataFrame) -> Series[bool]:
        return df["role"].isin(UNPAIRED) == df["pair_method"].isna()

    class Config:
        strict = True


class EmbeddingsTable(pa.DataFrameModel):
    """One CLIP embedding per distinct readable image of a project's groups."""

    content_hash: Series[str] = pa.Field(unique=True, str_matches=HASH_PATTERN)
    embedding: Series[object] = pa.Field(description="float32 vector of the model's size")
    model_id: Series[str] = pa.Field(description="CLIP model and weights, e.g. ViT-B-32/openai")

    @pa.check("embedding")
    def finite_vectors_of_one_size(cls, embedding: Series[object]) -> Series[bool]:
        sizes = embedding.map(len)
        return (sizes == sizes.max()) & embedding.map(lambda v: bool(np.isfinite(v).all()))

    @pa.check("model_id")
    def one_model(cls, model_id: Series[str]) -> Series[bool]:
        return model_id == model_id.iloc[0] if len(model_id) else model_id.notna()

    class Config:
        strict = True


BOX = ["ai_crop_x1", "ai_crop_y1", "ai_crop_x2", "ai_crop_y2"]


class PredictionsTable(pa.DataFrameModel):
    """One row per group: the model version's pick, its confidence and its crop box."""

    group_id: Series[str] = pa.Field(unique=True)
    ai_selected_index: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, lt=MAX_IMAGES, description="null: no member could be scored")
    ai_confidence: Series[float] = pa.Field(
        nullable=True, ge=0, le=1, description="softmax share of the pick; null: no scores")
    ai_scores: Series[object] = pa.Field(description="ranker score per member, NaN: unscored")
    ai_crop_x1: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    ai_crop_y1: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    ai_crop_x2: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    ai_crop_y2: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    model_version: Series[str]
    ranker: Series[str] = pa.Field(description="architecture and checkpoint hash")
    crop_proposer: Series[str]
    embedding_model: Series[str] = pa.Field(nullable=True, description="null: none used")

    @pa.dataframe_check
    def boxes_are_ordered(cls, df: pd.DataFrame) -> Series[bool]:
        box = df[BOX]
        return box.isna().any(axis=1) | (
            (box["ai_crop_x1"] <= box["ai_crop_x2"]) & (box["ai_crop_y1"] <= box["ai_crop_y2"]))

    class Config:
        strict = True


PLAN_RULES = ["added", "imported", "filled", "corrected", "recomputed", "sidecar",
              "fixed_action", "migrated", "seen", "identity"]
JSON_VALUE = r"^(null|true|false|-?[0-9].*|\".*\"|\{.*\})$"  # json.dumps of one DB value


class MergePlanTable(pa.DataFrameModel):
    """Every change the merge makes to the production DB: one cell, a whole new row
    (column '*'), or a column added to the table (group_id '(schema)'); each live row
    it changes, whole as it was seen (rule 'seen'), for publish to re-check; and the
    production DB it was planned against (rule 'identity', group_id '(schema)', column
    '*'), for publish to refuse any other. A plan of only that row changes nothing."""

    group_id: Series[str]
    column: Series[str] = pa.Field(isin=[*DECISION_COLUMNS, "*"],
                                   description="a v3 column, or '*' for a whole row")
    old: Series[str] = pa.Field(str_matches=JSON_VALUE, description="JSON: what the DB holds")
    new: Series[str] = pa.Field(str_matches=JSON_VALUE, description="JSON: what it will hold")
    rule: Series[str] = pa.Field(isin=PLAN_RULES, description="the guide's rule that applies")

    @pa.dataframe_check
    def one_change_per_cell(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df.duplicated(["group_id", "column"], keep=False)

    @pa.dataframe_check
    def whole_rows_are_new(cls, df: pd.DataFrame) -> Series[bool]:
        whole = df["column"] == "*"
        new_row = df["rule"].isin(["added", "imported"]) & (df["old"] == "null")
        as_seen = df["rule"].isin(["seen", "identity"]) & (df["old"] == df["new"])
        return ~whole | new_row | as_seen

    class Config:
        strict = True


ISSUE_KINDS = ["action_conflict", "ambiguous_group", "ambiguous_match", "broken_reject",
               "final_unreadable",
               "id_collision", "invalid_row", "legacy_duplicate", "legacy_invalid",
               "pick_differs", "sidecar_unreadable"]


class MergeIssuesTable(pa.DataFrameModel):
    """What the merge reported and left alone, with the reason."""

    kind: Series[str] = pa.Field(isin=ISSUE_KINDS)
    group_id: Series[str] = pa.Field(description="'' when the issue has no group")
    detail: Series[str]

    class Config:
        strict = True


EXPORT_KINDS = ["selection", "rejected"]


class TrainingExportTable(pa.DataFrameModel):
    """`backfill export`: one training entry per group, the v2 plan's format. A 'selection'
    has the kept image against the group's others; a 'rejected' group has only
    negatives. Paths are absolute, stages follow the group's order."""

    project: Series[str]
    kind: Series[str] = pa.Field(isin=EXPORT_KINDS)
    timestamp: Series[str] = pa.Field(str_matches=TIMESTAMP_PATTERN,
                                      description="the group's first timestamp")
    chosen_path: Series[str] = pa.Field(nullable=True, description="null: rejected")
    chosen_stage: Series[float] = pa.Field(nullable=True)
    neg_paths: Series[object] = pa.Field(description="the group's other members")
    neg_stages: Series[object]
    was_cropped: Series[bool] = pa.Field(description="user_action == 'crop'")
    anomaly: Series[bool] = pa.Field(description="a lower stage than the highest was kept")
    group_id: Series[str]
    user_action: Series[str] = pa.Field(isin=ACTIONS)
    crop_box: Series[object] = pa.Field(
        nullable=True, description="normalised [x1, y1, x2, y2] of the kept image")
    needs_review: Series[bool] = pa.Field(description="the recovered decision may be wrong")
    review_reason: Series[str] = pa.Field(nullable=True)
    match_confidence: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    final_path: Series[str] = pa.Field(nullable=True, description="absolute, under final_dir")
    final_modified_at: Series[str] = pa.Field(nullable=True, str_matches=ISO_UTC_PATTERN)

    @pa.dataframe_check
    def kind_matches_choice(cls, df: pd.DataFrame) -> Series[bool]:
        selection = df["kind"] == "selection"
        return ((selection == df["chosen_path"].notna())
                & (selection == (df["user_action"] != "reject")))

    @pa.dataframe_check
    def negatives_are_paired(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["neg_paths"].map(len) == df["neg_stages"].map(len)) & (
            df["neg_paths"].map(len) > 0)

    @pa.dataframe_check
    def rejected_teaches_no_choice(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["kind"] == "selection") | ~(df["was_cropped"] | df["anomaly"])

    class Config:
        strict = True
        unique = ["project", "group_id"]


# Every Parquet table a stage writes, by its file stem: validate checks them all.
TABLES = {
    "scan": ScanTable, "groups": GroupsTable, "ungrouped": UngroupedTable,
    "truth": TruthTable, "finals": FinalsTable, "embeddings": EmbeddingsTable,
    "predictions": PredictionsTable, "merge_plan": MergePlanTable,
    "merge_issues": MergeIssuesTable,
}
