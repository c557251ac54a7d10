"""The HTML report of a project: one self-contained file a person opens offline.

Summary figures, the plots (matplotlib, inline SVG), thumbnail strips of the groups where
the AI and your reviewer disagree (on the pick or beyond the crop tolerance), a gallery of
the recovered decisions with both boxes that the reader filters in the page, every
needs-review case with the located box drawn on its original and how to resolve it,
kept finals that cannot be read (in no DB row until fixed), orphans, unreadable and
ungrouped files with their reasons, and what validation warned about; a section with
nothing to show is left out. Images are inline JPEG thumbnails, so the file works
anywhere; each is decoded through imageinfo.decode with scan.max_pixels, and one that
cannot be shows a placeholder. Thumbnails are cached
by the file's content hash, size and box (Thumbnails), so a re-run draws only new ones.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import pandas as pd
from omegaconf import OmegaConf

from backfill.config.project import MERGE_SUMMARY, Project
from backfill.config.settings import EvaluateConfig, threads
from backfill.contracts.schemas import BOX, BROKEN_REJECT, CROP_BOX, UNREADABLE
from backfill.executors import LocalRunner
from backfill.files.atomic import write_text
from backfill.files.imageinfo import Unreadable, decode
from backfill.files.resultcache import ResultCache
from backfill.models.evaluate import has_box, percent, scored
from backfill.reports.resolve import how_to_resolve

# Bump when ``thumbnail`` draws another picture (size, box, JPEG settings): cached
# thumbnails of other versions are then not reused.
THUMBNAIL_VERSION = 1
TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"
# Thumbnails.want or a Thumbnails: (path, long side, box) -> data URI or None.
Thumb = Callable[..., str | None]


def thumbnail(path: Path, px: int, max_pixels: int, box: list[float] | None = None
              ) -> str | None:
    """A JPEG data URI of ``path`` with its long side ``px``; ``box`` (normalised) drawn
    in red. None when the file cannot, or must not, be decoded (the page shows a
    placeholder)."""
    try:
        image = decode(path, cv2.IMREAD_COLOR, max_pixels)
    except Unreadable:
        return None
    h, w = image.shape[:2]
    scale = px / max(h, w)
    image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    if box is not None and not any(pd.isna(v) for v in box):
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (int(round(v * s)) for v, s in zip(box, (w, h, w, h), strict=True))
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 255), 2)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg.tobytes()).decode()}" if ok else None


class Thumbnails:
    """``thumbnail`` for the report, cached under the cache folder by (content hash, long
    side, box, max_pixels): a re-run after a tolerance change decodes only the images it
    has not drawn before. A file the scan has no hash for is drawn once per run.

    Decoding full-size renders is most of the report's time, so the page first says every
    thumbnail it will show (``want``), ``draw`` decodes the missing ones on ``workers``
    threads (OpenCV releases the GIL), and the page is then built from them."""

    def __init__(self, cache_dir: Path, max_pixels: int, hashes: dict[Path, str],
                 workers: int = 1) -> None:
        self.max_pixels = max_pixels
        self.hashes = hashes
        self.workers = workers
        self.cache = ResultCache(
            cache_dir / "thumbnail" / f"v{THUMBNAIL_VERSION}-m{max_pixels}.parquet",
            ["content_hash", "px", "box"],
            {"content_hash": "str", "px": "int64", "box": "str", "uri": "str"})
        known = self.cache.known
        keys = zip(known["content_hash"], known["px"].astype(int), known["box"], strict=True)
        self.known: dict[tuple[str, int, str], str] = dict(zip(keys, known["uri"], strict=True))
        self.wanted: dict[tuple[str, int, str], tuple[Path, int, list[float] | None]] = {}
        self.drawn = 0

    def _key(self, path: Path, px: int, box: list[float] | None) -> tuple[str, int, str]:
        drawn = box is not None and not any(pd.isna(v) for v in box)
        box_key = ",".join(f"{float(v):.6f}" for v in box) if drawn else ""
        return self.hashes.get(path) or f"file:{path}", px, box_key

    def _keep(self, path: Path, key: tuple[str, int, str], uri: str | None) -> None:
        self.known[key] = uri or ""
        self.drawn += 1
        if self.hashes.get(path):  # only content-keyed thumbnails outlive the run
            self.cache.add({"content_hash": key[0], "px": key[1], "box": key[2],
                            "uri": uri or ""})

    def want(self, path: Path, px: int, box: list[float] | None = None) -> None:
        """Note a thumbnail the page will show; ``draw`` draws it unless it is cached."""
        key = self._key(path, px, box)
        if key not in self.known:
            self.wanted.setdefault(key, (path, px, box))

    def draw(self) -> None:
        """Draw every wanted thumbnail, on ``workers`` threads."""
        jobs = list(self.wanted.items())
        self.wanted.clear()

        def draw_one(job: tuple[tuple[str, int, str], tuple[Path, int, list[float] | None]]):
            path, px, box = job[1]
            return thumbnail(path, px, self.max_pixels, box)

        drawn = LocalRunner(max(1, self.workers)).map(draw_one, jobs)
        for (key, (path, _, _)), uri in zip(jobs, drawn, strict=True):
            self._keep(path, key, uri)

    def __call__(self, path: Path, px: int, box: list[float] | None = None) -> str | None:
        key = self._key(path, px, box)
        if key not in self.known:  # not wanted first: drawn here, on this thread
            self._keep(path, key, thumbnail(path, px, self.max_pixels, box))
        return self.known[key] or None

    def save(self) -> None:
        self.cache.save()


def svg_bars(labels: list[str], values: list[float], title: str, xlabel: str) -> str:
    """A horizontal bar chart as inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "backfill"  # same data, same bytes
    fig, ax = plt.subplots(figsize=(5, 0.35 * max(3, len(labels)) + 0.8))
    ax.barh(labels, values, color="#4c78a8")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    return out.getvalue()[out.getvalue().index("<svg"):]


def disagreements(tables: dict[str, pd.DataFrame], settings: EvaluateConfig, original: Path,
                  px: int, thumbs: Thumb, limit: int) -> tuple[list[dict], dict[str, int]]:
    """Groups where the AI picked another image than the person, or boxed the kept one
    outside the crop tolerance: a strip each, and how many of each. Both come from the
    evaluation's own scoring, so the counts are those behind the accuracies."""
    s = scored(tables["truth"], tables["groups"], tables["predictions"], settings)
    s["crop_miss"] = has_box(s) & ~s["crop_ok"]  # what crop accuracy counts as wrong
    wrong = s[~s["right"] | s["crop_miss"]]
    members = tables["groups"].set_index("group_id")
    strips = [strip(r, members.loc[r.group_id], original, px, thumbs)
              for r in wrong.head(limit).itertuples()]
    return strips, {"all": len(wrong), "picks": int((~s["right"]).sum()),
                    "crops": int(s["crop_miss"].sum())}


def strip(r, group: pd.Series, original: Path, px: int, thumbs: Thumb) -> dict:
    """One disagreement: the group's renders, the two picks marked, and what differs."""
    ai = -1 if pd.isna(r.ai_selected_index) else int(r.ai_selected_index)  # -1: no pick
    why = [] if r.right else ["picked another image" if ai >= 0 else "made no pick"]
    if r.crop_miss:
        why.append("crop off" + ("" if pd.isna(r.iou) else f" (IoU {r.iou:.2f})"))
    return {"group_id": r.group_id, "why": ", ".join(why), "images": [
        {"src": thumbs(original / p, px), "stage": stage, "name": name,
         "user": i == int(r.user_selected_index), "ai": i == ai}
        for i, (p, name, stage) in enumerate(zip(group["image_paths"], group["image_names"],
                                                 group["stages"], strict=True))]}


def gallery(tables: dict[str, pd.DataFrame], settings: EvaluateConfig, original: Path,
            px: int, thumbs: Thumb, limit: int) -> tuple[list[dict], int]:
    """Every decision with a kept render, as its original with the person's and the AI's
    boxes: worst crops first (IoU ascending, unmeasured last), so the ``limit`` shown are
    the ones worth a look. Scored with needs_review included: the page filters on it."""
    s = scored(tables["truth"], tables["groups"], tables["predictions"],
               replace(settings, include_needs_review=True))
    s = s[s["original_path"].notna()]
    s = s.sort_values(["iou", "group_id"], na_position="last", kind="stable")
    return [gallery_item(r, original, px, thumbs) for r in s.head(limit).itertuples()], len(s)


def gallery_item(r, original: Path, px: int, thumbs: Thumb) -> dict:
    """One recovered decision. The boxes are drawn over the thumbnail by the page (SVG,
    normalised coordinates) rather than into it: two colours the legend names, and the
    thumbnail is the strips' own (same size, no box), drawn and cached once."""
    return {"group_id": r.group_id, "action": r.user_action, "needs_review": r.needs_review,
            "confidence": None if pd.isna(r.confidence) else float(r.confidence),
            "iou": None if pd.isna(r.iou) else float(r.iou),
            "other_pick": not r.right,  # the AI's box was then meant for another render
            "src": thumbs(original / r.original_path, px),
            "user_box": box_of(r, CROP_BOX), "ai_box": box_of(r, BOX)}


def box_of(r, columns: list[str]) -> list[float] | None:
    """The row's box in ``columns``, or None when any coordinate is missing."""
    box = [getattr(r, c) for c in columns]
    return None if any(pd.isna(v) for v in box) else [float(v) for v in box]


def review_cases(truth: pd.DataFrame, original: Path, final: Path, px: int,
                 thumbs: Thumb, limit: int) -> tuple[list[dict], int]:
    """Every needs-review decision: the original with the located box, and the final."""
    cases = truth[truth["needs_review"]]
    out = []
    for r in cases.head(limit).itertuples():
        box = [r.crop_x1, r.crop_y1, r.crop_x2, r.crop_y2]
        out.append({
            "group_id": r.group_id, "action": r.user_action, "reason": r.review_reason,
            "resolve": how_to_resolve(r.review_reason),
            "confidence": "n/a" if pd.isna(r.confidence) else f"{r.confidence:.3f}",
            # "" when there is no file to show, None when it cannot be read.
            "original": thumbs(original / r.original_path, px * 2, box)
            if isinstance(r.original_path, str) else "",
            "final": thumbs(final / r.final_path, px * 2)
            if isinstance(r.final_path, str) else "",
        })
    return out, len(cases)


def unreadable_finals(truth: pd.DataFrame, action: str = UNREADABLE) -> list[dict]:
    """Groups whose kept final cannot be read (or, with ``action`` BROKEN_REJECT, that
    kept nothing but hold renders that cannot be read): in no DB row until the files are
    fixed."""
    rows = truth[truth["user_action"] == action]
    return [{"group_id": g, "final_path": f if isinstance(f, str) else "-", "reason": why}
            for g, f, why in zip(rows["group_id"], rows["final_path"], rows["review_reason"],
                                 strict=True)]


def report_html(project: Project, tables: dict[str, pd.DataFrame], metrics: dict,
           findings: list, plots: dict[str, pd.DataFrame]) -> str:
    from jinja2 import Environment, select_autoescape

    cfg = project.settings.validate
    px, limit = cfg.thumbnail_px, cfg.max_cases
    max_pixels = project.settings.scan.max_pixels
    original, final = project.path("original_dir"), project.path("final_dir")
    settings = project.settings.evaluate
    scan, finals = tables["scan"], tables["finals"]
    hashed = scan[scan["content_hash"].notna()]
    folder = {"original": original, "final": final}
    thumbs = Thumbnails(project.cache_dir, max_pixels, {
        folder[s] / r: h for s, r, h in zip(hashed["source"], hashed["rel_path"],
                                            hashed["content_hash"], strict=True)},
                        threads(cfg.workers))

    def sections(thumb: Thumb) -> dict[str, tuple[list[dict], int | dict[str, int]]]:
        return {"strips": disagreements(tables, settings, original, px, thumb, limit),
                "gallery": gallery(tables, settings, original, px, thumb, limit),
                "reviews": review_cases(tables["truth"], original, final, px, thumb, limit)}

    try:
        sections(thumbs.want)  # every thumbnail the page shows
        thumbs.draw()  # those not cached, on threads
        shown = sections(thumbs)
    finally:
        thumbs.save()
    (strips, n_wrong), (items, n_items), (reviews, n_review) = shown.values()
    ungrouped = tables["ungrouped"]
    merge_path = project.metrics(MERGE_SUMMARY)
    iou, by_stage = plots["iou"], plots["accuracy_by_stage"]
    charts = [
        svg_bars(iou["iou"].tolist(), iou["decisions"].tolist(),
                 "IoU of the AI's crop with your reviewer's", "decisions"),
        svg_bars(by_stage["kept_stage"].tolist(), by_stage["selection_accuracy"].tolist(),
                 "selection accuracy by the stage your reviewer kept", "share right"),
    ]
    picks = pd.crosstab(plots["picks"]["user_stage"], plots["picks"]["ai_stage"])
    env = Environment(autoescape=select_autoescape(default=True))
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        project=project.name, metrics=metrics, percent=percent, charts=charts,
        version=OmegaConf.select(project.cfg, "model.name"),
        picks=picks, strips=strips, n_wrong=n_wrong, reviews=reviews, n_review=n_review,
        gallery=items, n_gallery=n_items,
        actions=sorted({i["action"] for i in items}),
        unreadable_finals=unreadable_finals(tables["truth"]),
        broken_rejects=unreadable_finals(tables["truth"], BROKEN_REJECT),
        orphans=finals[finals["role"] == "orphan"][["rel_path", "reason"]].to_dict("records"),
        unreadable=scan[scan["status"] == "error"][["source", "rel_path", "reason"]]
        .to_dict("records"),
        ungrouped=ungrouped[["rel_path", "reason"]].head(limit).to_dict("records"),
        n_ungrouped=len(ungrouped),
        findings=findings, limit=limit,
        merge=json.loads(merge_path.read_text()) if merge_path.exists() else None,
        model=tables["predictions"]["model_version"].iloc[0] if len(tables["predictions"])
        else "-")


def write_report(project: Project, tables: dict[str, pd.DataFrame], metrics: dict,
                 findings: list, plots: dict[str, pd.DataFrame]) -> Path:
    out = project.report
    write_text(report_html(project, tables, metrics, findings, plots), out)
    return out


def performance_summary(project: Project) -> str:
    """The v3 decisions plan's finish-project figures from the emitted DB, and where
    the report is."""
    from backfill.db.schema import open_production

    db = project.merged_db
    if not db.exists():
        return (f"{project.name}: no {db.relative_to(project.root)} yet: run "
                f"`dvc repro validate@{project.name}` first.")
    with open_production(db) as conn:
        total, picked, cropped, crop_n = conn.execute(
            "SELECT count(selection_match), sum(selection_match = 1), sum(crop_match = 1), "
            "count(crop_match) FROM ai_decisions WHERE user_action != 'reject'").fetchone()
    conn.close()

    def share(hits, n) -> str:
        return f"{hits or 0}/{n} ({percent((hits or 0) / n) if n else 'n/a'})"

    report = project.report
    where = (f"report: {report}" if report.exists()
             else f"no report yet: `dvc repro validate@{project.name}`")
    return "\n".join([
        f"AI Performance for {project.name}, as {db.name} records it (each decision's AI "
        "pick as logged; `predict` scores today's model version instead):",
        f"   Selection Accuracy: {share(picked, total)}",
        f"   Crop Accuracy: {share(cropped, crop_n)}",
        *([] if total else ["   (no AI predictions recorded: the model version is a rule, or "
                            "no learned model ran)"]),
        where])
