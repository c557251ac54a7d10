"""Pipeline speed: `dvc repro` as users run it, stage by stage, in a throwaway repository.

Each run copies this repository's pipeline (conf/, src/, dvc.yaml, .dvc/config, as
tests/conftest.py's repo_copy does; or --repo's, an older checkout, for a before/after)
into a folder of its own under --out, with its own git and DVC and no project, registers
one generated project, ``bench``, with `backfill project add bench --original-dir ...
--final-dir ... --real-db ... embed.pretrained=null` (random CLIP weights: the same
compute as trained ones, offline) and runs the venv's `dvc` and `backfill` by path.
Every command is timed whole, as the user waits for it (DVC's own start-up, hashing and
lock writing included), with its peak RSS measured two ways: the largest single process
of the command's tree (GNU ``/usr/bin/time -v``, exact; absent elsewhere) and the sum
over the tree, sampled every 50 ms with psutil (dvc, the shell and the stage's process
together).

The project comes from ``backfill.demo.synthetic.make_project`` (renders of 1 to 4
stages per group: stage1 and stage1.5 832x1216, 1216x832 or 1024x1024, stage2 at 2x,
stage3 3072x3072, times --scale; companions, bad files and finals cropped and saved in
every way the person's tools save them) and a partial production DB
(``backfill.demo.production.make_production_db``). The files are cached under
--out/images/ and reused by later runs with the same arguments. Every file is read once
before the first timing, so every figure is with the page cache warm (no disk speed),
and with the pipeline's own caches (cache_dir: fingerprints, located boxes, embeddings,
thumbnails) empty where it says cold.

--shape sample (default): N groups (--groups, 120) at the person's real sizes. Measures:
- cold: every stage once, in dvc.yaml's order, each as `dvc repro -f -s <stage>@bench`
  (one DVC call per stage, so each stage's time and memory are its own; a single
  `dvc repro` pays DVC's start-up once instead of seven times). Seconds and share each.
- floors, in the same run on the same files: decoding every image file once (every scan
  row not 'error', renders and finals) with the embed stage's decoder and thread pool
  (``decode_rgb`` on ``prefetch``, --threads threads), and the CLIP forward pass once per
  grouped render (model only: ``encode_image`` on tensors already preprocessed, batch
  32, as bench_embed's "model only"; the first 64 renders' tensors are reused in turn,
  the compute does not depend on the pixels). Target: cold / (decode + model) <= 1.3.
- embed at its floor: its images per second inside the stage (from its summary line)
  against decoding the grouped renders alone, then the model on them:
  1/(1/decode + 1/model), as the issue defines it. The stage also preprocesses (PIL
  resize to 224: about a fifth of a decode's time), which the floor leaves out.
  Target: >= 0.9.
- no-op: `dvc repro` again with nothing changed (scan and merge always run; nothing else
  should). Target: <= 2% of cold.
- tolerance change, as README's "Tune it" says: `extract: approve_tolerance: 0.03`
  written into conf/project/bench.yaml, then `backfill compose` and `dvc repro`, both
  timed. Target: <= 5% of cold.
- model-version change: the version named in conf/project/bench.yaml switched, then
  `backfill compose` and `dvc repro`. `person` needs the person's checkpoints and
  ViT-B-32/openai embeddings (a download; predict refuses random-weight ones), so the
  version switched to is one trained here first (`backfill train benchv
  ranker.epochs=2 crop.epochs=2`, timed apart, not counted). No target: time and share.

--shape mojo3: a project shaped like the person's largest (6,500 groups: about 18,000
renders at make_project's mix of stages, plus finals) at 1/8 of the real pixels
(--scale), its group count times each of --fractions. For each: every stage cold (as
above) and warm (`dvc repro -f -s` again: forced, the pipeline's caches full), and a
no-op `dvc repro`; seconds and peak RSS per stage. With two fractions or more, each
stage's time at the largest over the smallest, against the groups' ratio (linear growth
gives the same ratio). Target: every stage's peak RSS under 3 GiB.

Both end with one table: each target, the measured value and ratio, OK or MISSED.

    python benchmarks/bench_pipeline.py [--groups 120] [--scale 1] [--threads 2]
    python benchmarks/bench_pipeline.py --shape mojo3 --fractions 0.25,1 [--scale 0.125]
    options: --shape sample,mojo3 runs both; --keep keeps the repositories; --out DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml
from bench_embed import consume, encode_batches, warm_page_cache
from timing import peak_rss_mib, timed

from backfill.demo.workspace import scratch_repo
from backfill.pipeline import STAGES

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent  # the venv's bin: backfill and dvc live here
NAME = "bench"  # the project's name (and its folder's: the production DB's group ids)
STAGE_NAMES = [s.name for s in STAGES]
MEASURED = REPO  # whose pipeline and code are timed: --repo, for a before/after
MOJO3_GROUPS = 6500
MOJO3_SCALE = 1 / 8
GENERATOR_VERSION = 1  # bump when the generated project changes
# Targets.
COLD_OVER_FLOORS = 1.3
NOOP_SHARE = 0.02
EMBED_OVER_FLOOR = 0.9  # images/s inside the stage over 1/(1/decode + 1/model)
TOLERANCE_SHARE = 0.05
RSS_LIMIT_MIB = 3 * 1024
TOLERANCE = 0.03
MiB = 1024 * 1024


# ---------------------------------------------------------------------------- commands

def _gnu_time() -> str | None:
    """/usr/bin/time when it is GNU time (``-v``: the peak RSS of the largest process)."""
    if not Path("/usr/bin/time").exists():
        return None
    try:
        ok = subprocess.run(["/usr/bin/time", "-v", "-o", os.devnull, "true"],
                            capture_output=True).returncode == 0
    except OSError:
        return None
    return "/usr/bin/time" if ok else None


GNU_TIME = _gnu_time()


@dataclass
class Run:
    """One command: wall seconds, peak RSS (largest process; whole tree, sampled)."""
    label: str
    rc: int
    seconds: float
    proc_mib: float | None  # GNU time's maximum resident set size, None without it
    tree_mib: float  # the tree's summed RSS, sampled
    output: str = field(repr=False)

    @property
    def peak_mib(self) -> float:
        return max(self.tree_mib, self.proc_mib or 0.0)

    def ran(self) -> list[str]:
        return re.findall(r"Running stage '([\w@.-]+)'", self.output)


class TreeSampler:
    """The highest summed RSS of a process and its descendants, every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while True:
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / MiB


def sh(cmd: list[str], cwd: Path, label: str | None = None, check: bool = True) -> Run:
    """Run ``cmd`` in ``cwd`` with the venv's bin first on PATH (dvc's stages call
    `backfill`); time it and measure its peak RSS."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if MEASURED != REPO:  # the venv's backfill runs the measured checkout's code
        env["PYTHONPATH"] = str(MEASURED / "src")
    report = None
    full = list(cmd)
    if GNU_TIME:
        fd, report = tempfile.mkstemp(prefix="bench_time_", suffix=".txt")
        os.close(fd)
        full = [GNU_TIME, "-v", "-o", report, *cmd]

    def go() -> tuple[int, str, float]:
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        sampler = TreeSampler(proc.pid)
        out, _ = proc.communicate()
        return proc.returncode, out, sampler.stop()

    seconds, (rc, out, tree) = timed(go)
    proc_mib = None
    if report:
        text = Path(report).read_text(errors="replace")
        Path(report).unlink(missing_ok=True)
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        proc_mib = int(found.group(1)) / 1024 if found else None
    if check and rc != 0:
        tail = "\n".join(out.splitlines()[-40:])
        raise SystemExit(f"`{' '.join(cmd)}` failed in {cwd} (exit {rc}):\n{tail}")
    return Run(label or " ".join(cmd[1:]), rc, seconds, proc_mib, tree, out)


def dvc(*args: str) -> list[str]:
    return [str(BIN / "dvc"), *args]


def backfill(*args: str) -> list[str]:
    return [str(BIN / "backfill"), *args]


# ------------------------------------------------------------------ project and repository

@dataclass
class Project:
    root: Path
    original_dir: Path
    final_dir: Path
    real_db: Path
    counts: dict
    fresh: bool = False  # generated by this run (else reused from a previous one)


def generate(folder: Path, n_groups: int, scale: float, seed: int) -> Project:
    """make_project's files and a production DB under ``folder``; reused when a
    previous run with the same arguments completed (its manifest says so)."""
    from backfill.demo.production import make_production_db
    from backfill.demo.synthetic import make_project

    root = folder / NAME
    manifest = folder / "manifest.json"
    wanted = {"groups": n_groups, "scale": scale, "seed": seed, "version": GENERATOR_VERSION}
    project = Project(root, root / "original", root / "final", folder / "live" / f"{NAME}.db",
                      {})
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("args") == wanted and project.real_db.exists() and root.is_dir():
            project.counts = saved["counts"]
            return project
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    gen = make_project(root, n_groups=n_groups, seed=seed, scale=scale)
    make_production_db(gen, project.real_db, seed=seed)
    images = {".png", ".jpg", ".jpeg"}
    project.counts = {
        "groups": n_groups,
        "renders": sum(len(g.rel_paths) for g in gen.groups),
        "original_images": sum(1 for p in project.original_dir.rglob("*")
                               if p.suffix.lower() in images and p.is_file()),
        "final_images": sum(1 for p in project.final_dir.rglob("*")
                            if p.suffix.lower() in images and p.is_file()),
        "bytes": sum(p.stat().st_size for p in root.rglob("*")
                     if p.is_file() and not p.is_symlink()),
        "generated_s": round(time.perf_counter() - start, 1),
    }
    manifest.write_text(json.dumps({"args": wanted, "counts": project.counts}, indent=1))
    project.fresh = True
    return project


def make_repo(dst: Path, project: Project) -> Path:
    """A copy of this repository's pipeline with no projects but ``bench``; its own git
    and DVC; the production DB copied in (a --keep'd copy may be published to)."""
    scratch_repo(MEASURED, dst)
    live = dst / "live" / f"{NAME}.db"
    live.parent.mkdir()
    shutil.copy2(project.real_db, live)
    sh(backfill("project", "add", NAME, "--original-dir", str(project.original_dir),
                "--final-dir", str(project.final_dir), "--real-db", str(live),
                "embed.pretrained=null"), dst)
    return dst


def stage_by_stage(repo: Path) -> dict[str, Run]:
    """Every stage once, forced, in order: `dvc repro -f -s <stage>@bench`."""
    return {s: sh(dvc("repro", "-f", "-s", f"{s}@{NAME}"), repo, f"{s}@{NAME}")
            for s in STAGE_NAMES}


def summary_line(run: Run, stage: str) -> str:
    """The stage's own one-line summary (`<stage> bench: ...`), if it printed one."""
    lines = [ln.strip() for ln in run.output.splitlines()
             if ln.strip().startswith(f"{stage} {NAME}")]
    return lines[-1] if lines else ""


def edit_project(repo: Path, fn) -> None:
    path = repo / "conf" / "project" / f"{NAME}.yaml"
    path.write_text(fn(path.read_text()))


def set_tolerance(text: str) -> str:
    """``extract: approve_tolerance: TOLERANCE`` in a project's conf, as a user writes it."""
    if re.search(r"^extract:", text, flags=re.M):
        return re.sub(r"^extract:\n", f"extract:\n  approve_tolerance: {TOLERANCE}\n", text,
                      count=1, flags=re.M)
    return text.rstrip("\n") + f"\nextract:\n  approve_tolerance: {TOLERANCE}\n"


def all_images(project: Project) -> list[Path]:
    suffixes = {".png", ".jpg", ".jpeg"}
    return [p for folder in (project.original_dir, project.final_dir)
            for p in sorted(folder.rglob("*")) if p.suffix.lower() in suffixes
            and p.is_file()]


# ------------------------------------------------------------------------------ floors

def floors(repo: Path, project: Project, threads: int, batch: int) -> dict:
    """Decode every image once (threads), and the CLIP forward pass once per render."""
    import pandas as pd
    import torch

    from backfill.models.clip import ClipSettings, load_clip, resolve_device
    from backfill.stages.embed import decode_rgb, prefetch

    params = yaml.safe_load((repo / "params.yaml").read_text())["projects"][NAME]
    max_pixels = params["scan"]["max_pixels"]
    decode = functools.partial(decode_rgb, max_pixels=max_pixels)
    errors: list[str] = []

    def decode_one(path: Path):
        try:
            return decode(path)
        except ValueError as exc:
            errors.append(f"{path.name}: {exc}")
            return None

    scan = pd.read_parquet(repo / "data" / NAME / "scan.parquet")
    scan = scan[(scan.status != "error") & (scan.ext != "")]
    roots = {"original": project.original_dir, "final": project.final_dir}
    paths = [roots[s] / r for s, r in zip(scan.source, scan.rel_path, strict=True)]
    readable = {str(p) for p in paths}
    groups = pd.read_parquet(repo / "data" / NAME / "groups.parquet")
    renders = [project.original_dir / r for ps in groups.image_paths for r in ps
               if str(project.original_dir / r) in readable]
    window = 2 * batch  # as the embed stage prefetches
    # Every file once, timed in two parts: the renders alone are what the embed stage
    # decodes (its floor, with the model's); the rest completes the pipeline's floor.
    in_renders = set(renders)
    others = [p for p in paths if p not in in_renders]
    render_decode_s, n = timed(lambda: consume(prefetch(decode_one, renders, threads, window)))
    other_decode_s, m = timed(lambda: consume(prefetch(decode_one, others, threads, window)))
    assert n + m == len(paths), (n, m, len(paths))
    decode_s = render_decode_s + other_decode_s

    device = resolve_device(params["embed"].get("device", "auto"))
    settings = ClipSettings(model=params["embed"]["model"], pretrained=None,
                            seed=params["embed"]["seed"], device=device, batch_size=batch,
                            workers=threads, precision=params["embed"]["precision"],
                            max_pixels=max_pixels)
    model, preprocess = load_clip(settings, device)
    distinct = list(prefetch(lambda p: preprocess(decode(p)), renders[:64], threads, window))
    tensors = [distinct[i % len(distinct)] for i in range(len(renders))] if distinct else []
    if tensors:  # one batch first: one-off costs (allocator, kernel choice) count nowhere
        encode_batches(tensors[:batch], model, device, batch)
    model_s, m = timed(lambda: encode_batches(tensors, model, device, batch))
    assert m == len(renders)
    return {"decode_s": decode_s, "files": len(paths), "decode_errors": errors,
            "render_decode_s": render_decode_s,
            "model_s": model_s, "renders": len(renders), "device": device,
            "torch_threads": torch.get_num_threads(), "threads": threads, "batch": batch}


# ------------------------------------------------------------------------------ output

def mib(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def print_stages(title: str, runs: dict[str, Run], total: float | None = None,
                 warm: dict[str, Run] | None = None) -> None:
    total = total if total is not None else sum(r.seconds for r in runs.values())
    print(f"\n{title}")
    head = f"  {'stage':<10} {'seconds':>9} {'share':>7} {'RSS MiB':>9} {'tree MiB':>9}"
    if warm:
        head += f" {'warm s':>9} {'RSS MiB':>9} {'tree MiB':>9}"
    print(head + "   (RSS: largest process, GNU time; tree: summed, sampled)")
    for stage, r in runs.items():
        line = (f"  {stage:<10} {r.seconds:9.2f} {r.seconds / total:7.1%} "
                f"{mib(r.proc_mib):>9} {mib(r.tree_mib):>9}")
        if warm:
            w = warm[stage]
            line += f" {w.seconds:9.2f} {mib(w.proc_mib):>9} {mib(w.tree_mib):>9}"
        print(line)
    line = f"  {'total':<10} {total:9.2f} {1:7.1%}"
    if warm:
        line += " " * 20 + f" {sum(w.seconds for w in warm.values()):9.2f}"
    print(line)
    for stage, r in runs.items():
        said = summary_line(r, stage)
        if said:
            print(f"    {said}")


@dataclass
class Row:
    what: str
    measured: str
    target: str
    ratio: str
    verdict: str


def embed_floor_row(run: Run, fl: dict) -> Row:
    """Embed's rate inside its stage (the seconds its summary line gives: no DVC, no
    process start-up) against decoding its renders and running the model on them, in
    turn: 1/(1/decode + 1/model)."""
    said = re.search(r"([\d,]+) embedded.*; ([\d.]+)s ->", summary_line(run, "embed"))
    floor = fl["renders"] / (fl["render_decode_s"] + fl["model_s"])
    if not said:
        return Row("sample: embed in stage / floor", "no summary line", f">= {EMBED_OVER_FLOOR}",
                   "-", "-")
    rate = int(said.group(1).replace(",", "")) / float(said.group(2))
    print(f"  embed inside its stage: {rate:.2f} images/s; its floor, decoding its "
          f"{fl['renders']:,} renders ({fl['render_decode_s']:.2f}s) then the model "
          f"({fl['model_s']:.2f}s): {floor:.2f}/s; ratio {rate / floor:.2f} "
          f"(target >= {EMBED_OVER_FLOOR})")
    return Row("sample: embed in stage / (decode + model), images/s", f"{rate:.2f} / {floor:.2f}",
               f">= {EMBED_OVER_FLOOR}", f"{rate / floor:.2f}",
               "OK" if rate / floor >= EMBED_OVER_FLOOR else "MISSED")


def rss_row(label: str, runs: dict[str, Run]) -> Row:
    stage, worst = max(runs.items(), key=lambda kv: kv[1].peak_mib)
    ok = worst.peak_mib < RSS_LIMIT_MIB
    return Row(f"{label}: largest stage peak RSS ({stage})", f"{worst.peak_mib:,.0f} MiB",
               f"< {RSS_LIMIT_MIB:,} MiB", f"{worst.peak_mib / RSS_LIMIT_MIB:.2f}",
               "OK" if ok else "MISSED")


def print_rows(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, f)) for r in rows + [Row("check", "measured", "target",
                                                          "ratio", "")])
              for f in ("what", "measured", "target", "ratio")]
    print("\n" + "=" * 100)
    print(f"{'check':<{widths[0]}}  {'measured':>{widths[1]}}  {'target':<{widths[2]}}  "
          f"{'ratio':>{widths[3]}}  verdict")
    for r in rows:
        print(f"{r.what:<{widths[0]}}  {r.measured:>{widths[1]}}  {r.target:<{widths[2]}}  "
              f"{r.ratio:>{widths[3]}}  {r.verdict}")


def describe(project: Project, scale: float, folder: Path) -> str:
    c = project.counts
    how = (f"generated in {c['generated_s']:.0f}s" if project.fresh
           else f"reused (generated in {c['generated_s']:.0f}s by an earlier run)")
    return (f"project: {c['groups']:,} groups, {c['renders']:,} renders "
            f"({c['original_images']:,} images under original/ incl. bad files, "
            f"{c['final_images']:,} under final/), {c['bytes'] / 1e9:,.2f} GB, scale {scale:g}; "
            f"{how}: {folder}")


# ------------------------------------------------------------------------------ shapes

def run_sample(args, out: Path) -> tuple[list[Row], dict]:
    scale = 1.0 if args.scale is None else args.scale
    groups = args.groups or 120
    folder = out / "images" / f"sample_{groups}g_scale{scale:g}_seed{args.seed}"
    project = generate(folder, groups, scale, args.seed)
    print(f"\n### sample: {groups} groups at {scale:g} x the person's render sizes")
    print(describe(project, scale, folder))
    repo = make_repo(out / "repo_sample", project)
    size = warm_page_cache(all_images(project))
    print(f"page cache warmed ({size / 1e9:,.2f} GB of images read once): no figure "
          "includes disk speed")

    cold = stage_by_stage(repo)
    cold_s = sum(r.seconds for r in cold.values())
    print_stages("cold, every stage once (`dvc repro -f -s <stage>@bench`, caches empty)",
                 cold, cold_s)

    fl = floors(repo, project, args.threads, args.batch_size)
    floor_s = fl["decode_s"] + fl["model_s"]
    print(f"\nfloors, same files, same run ({fl['device']}, {fl['torch_threads']} torch "
          f"threads):")
    print(f"  decode every image once, {fl['threads']} threads: {fl['decode_s']:.2f}s "
          f"({fl['files']:,} files, {fl['files'] / fl['decode_s']:.1f}/s)"
          + (f"; {len(fl['decode_errors'])} unreadable" if fl["decode_errors"] else ""))
    print(f"  CLIP forward once per render, batch {fl['batch']}: {fl['model_s']:.2f}s "
          f"({fl['renders']:,} renders, {fl['renders'] / max(fl['model_s'], 1e-9):.1f}/s)")
    print(f"  cold / (decode + model) = {cold_s:.2f} / {floor_s:.2f} = "
          f"{cold_s / floor_s:.2f} (target <= {COLD_OVER_FLOORS})")
    embed_row = embed_floor_row(cold["embed"], fl)

    noop = sh(dvc("repro"), repo, "no-op dvc repro")
    print(f"\nno-op `dvc repro`: {noop.seconds:.2f}s ({noop.seconds / cold_s:.1%} of cold); "
          f"ran {', '.join(noop.ran()) or 'nothing'}; peak RSS {mib(noop.peak_mib)} MiB")

    edit_project(repo, set_tolerance)
    tol_compose = sh(backfill("compose"), repo, "backfill compose")
    tol_repro = sh(dvc("repro"), repo, "dvc repro (tolerance)")
    tol_s = tol_compose.seconds + tol_repro.seconds
    print(f"\ntolerance change (extract.approve_tolerance {TOLERANCE} in "
          f"conf/project/{NAME}.yaml): backfill compose {tol_compose.seconds:.2f}s + dvc repro "
          f"{tol_repro.seconds:.2f}s = {tol_s:.2f}s ({tol_s / cold_s:.1%} of cold); ran "
          f"{', '.join(tol_repro.ran())}; peak RSS {mib(tol_repro.peak_mib)} MiB")
    said = summary_line(tol_repro, "extract")
    if said:
        print(f"    {said}")

    model_row, model = None, {}
    person = REPO / "data" / "models" / "person"
    print("\nmodel-version change: `person` skipped: it needs ViT-B-32/openai embeddings "
          "(a download; this run's are random-weight, which predict refuses)"
          + ("" if (person / "ranker_v3_w10.pt").exists() else
             " and the person's checkpoints in data/models/person/ (absent)")
          + "; switching to a version trained here instead")
    train = sh(backfill("train", "benchv", "--projects", NAME, "ranker.epochs=2",
                        "crop.epochs=2"), repo, "backfill train benchv", check=False)
    if train.rc == 0 and (repo / "conf" / "model" / "benchv.yaml").exists():
        edit_project(repo, lambda t: re.sub(r"(- /model@model:) \S+", r"\1 benchv", t))
        m_compose = sh(backfill("compose"), repo, "backfill compose")
        m_repro = sh(dvc("repro"), repo, "dvc repro (model version)")
        m_s = m_compose.seconds + m_repro.seconds
        print(f"  backfill train benchv (2 epochs each, not counted): {train.seconds:.2f}s")
        print(f"  baseline -> benchv: backfill compose {m_compose.seconds:.2f}s + dvc repro "
              f"{m_repro.seconds:.2f}s = {m_s:.2f}s ({m_s / cold_s:.1%} of cold); ran "
              f"{', '.join(m_repro.ran())}; peak RSS {mib(m_repro.peak_mib)} MiB")
        model_row = Row("sample: model-version change / cold", f"{m_s:.2f}s", "(none)",
                        f"{m_s / cold_s:.1%}", "-")
        model = {"train_s": train.seconds, "compose_s": m_compose.seconds,
                 "repro_s": m_repro.seconds, "ran": m_repro.ran()}
    else:
        tail = " | ".join(train.output.strip().splitlines()[-3:])
        print(f"  skipped: `backfill train` could not train a version here: {tail[:300]}")
        model_row = Row("sample: model-version change / cold", "skipped", "(none)", "-", "-")

    rows = [
        Row("sample: cold / (decode once + model once)", f"{cold_s:.2f}s / {floor_s:.2f}s",
            f"<= {COLD_OVER_FLOORS}", f"{cold_s / floor_s:.2f}",
            "OK" if cold_s / floor_s <= COLD_OVER_FLOORS else "MISSED"),
        Row("sample: no-op dvc repro / cold", f"{noop.seconds:.2f}s",
            f"<= {NOOP_SHARE:.0%}", f"{noop.seconds / cold_s:.1%}",
            "OK" if noop.seconds <= NOOP_SHARE * cold_s else "MISSED"),
        Row("sample: tolerance change / cold", f"{tol_s:.2f}s", f"<= {TOLERANCE_SHARE:.0%}",
            f"{tol_s / cold_s:.1%}", "OK" if tol_s <= TOLERANCE_SHARE * cold_s else "MISSED"),
        embed_row,
        model_row,
        rss_row("sample", cold),
    ]
    result = {
        "project": project.counts, "scale": scale, "repo": str(repo),
        "cold": {s: _run_dict(r) for s, r in cold.items()}, "cold_s": cold_s,
        "floors": fl, "noop": _run_dict(noop),
        "tolerance": {"compose": _run_dict(tol_compose), "repro": _run_dict(tol_repro)},
        "model_change": model,
    }
    if not args.keep:
        shutil.rmtree(repo, ignore_errors=True)
    return rows, result


def run_mojo3(args, out: Path) -> tuple[list[Row], dict]:
    scale = MOJO3_SCALE if args.scale is None else args.scale
    base = args.groups or MOJO3_GROUPS
    rows: list[Row] = []
    per: dict[float, dict] = {}
    for fraction in args.fractions:
        groups = max(2, round(base * fraction))
        folder = out / "images" / f"mojo3_{groups}g_scale{scale:g}_seed{args.seed}"
        project = generate(folder, groups, scale, args.seed)
        print(f"\n### mojo3 shape x {fraction:g}: {groups:,} groups at {scale:g} x the real "
              "pixels")
        print(describe(project, scale, folder))
        repo = make_repo(out / f"repo_mojo3_{fraction:g}", project)
        warm_page_cache(all_images(project))
        cold = stage_by_stage(repo)
        warm = stage_by_stage(repo)
        noop = sh(dvc("repro"), repo, "no-op dvc repro")
        cold_s = sum(r.seconds for r in cold.values())
        print_stages(f"cold (`dvc repro -f -s <stage>@bench`, caches empty) and warm (the "
                     f"same again, caches full), x {fraction:g}", cold, cold_s, warm)
        print(f"  no-op `dvc repro`: {noop.seconds:.2f}s ({noop.seconds / cold_s:.1%} of cold)"
              f"; ran {', '.join(noop.ran()) or 'nothing'}")
        both = {s: max(cold[s], warm[s], key=lambda r: r.peak_mib) for s in STAGE_NAMES}
        rows.append(rss_row(f"mojo3 x {fraction:g} ({groups:,} groups)", both))
        per[fraction] = {"groups": groups, "project": project.counts, "repo": str(repo),
                         "cold": {s: _run_dict(r) for s, r in cold.items()},
                         "warm": {s: _run_dict(r) for s, r in warm.items()},
                         "noop": _run_dict(noop)}
        if not args.keep:
            shutil.rmtree(repo, ignore_errors=True)
    if len(per) >= 2:
        lo, hi = min(per), max(per)
        g = per[hi]["groups"] / per[lo]["groups"]
        print(f"\ngrowth, x {hi:g} over x {lo:g} ({per[hi]['groups']:,} / {per[lo]['groups']:,}"
              f" groups = {g:.2f}: linear growth gives {g:.2f})")
        print(f"  {'stage':<10} {'cold':>8} {'warm':>8} {'RSS':>8}")
        for s in STAGE_NAMES:
            ratio = [per[hi][k][s]["seconds"] / max(per[lo][k][s]["seconds"], 1e-9)
                     for k in ("cold", "warm")]
            rss = per[hi]["cold"][s]["peak_mib"] / max(per[lo]["cold"][s]["peak_mib"], 1e-9)
            print(f"  {s:<10} {ratio[0]:8.2f} {ratio[1]:8.2f} {rss:8.2f}")
        total = [sum(per[f]["cold"][s]["seconds"] for s in STAGE_NAMES) for f in (lo, hi)]
        rows.append(Row(f"mojo3: cold time x {hi:g} / x {lo:g}", f"{total[1]:.1f}s / "
                        f"{total[0]:.1f}s", f"~{g:.2f} (linear)", f"{total[1] / total[0]:.2f}",
                        "-"))
    return rows, {str(f): v for f, v in per.items()}


def _run_dict(r: Run) -> dict:
    d = asdict(r)
    d.pop("output")
    d["peak_mib"] = r.peak_mib
    d["ran"] = r.ran()
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="sample",
                        help="sample, mojo3, or both as sample,mojo3 (default: sample)")
    parser.add_argument("--groups", type=int, default=None,
                        help="sample: groups (default 120); mojo3: groups before --fractions "
                             f"(default {MOJO3_GROUPS})")
    parser.add_argument("--fractions", default=None,
                        help="mojo3: comma-separated fractions of its groups (default 0.25)")
    parser.add_argument("--fraction", type=float, default=None,
                        help="mojo3: one fraction (same as --fractions F)")
    parser.add_argument("--scale", type=float, default=None,
                        help="render size factor (default: 1 for sample, 1/8 for mojo3)")
    parser.add_argument("--threads", type=int, default=2, help="decode floor's threads")
    parser.add_argument("--batch-size", type=int, default=32, help="model floor's batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true",
                        help="keep the throwaway repositories (under --out)")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "pipeline",
                        help="work folder: cached images, repositories, results JSON "
                             "(default benchmarks/out/pipeline)")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose pipeline and code are measured, e.g. a "
                             "`git worktree` of an older commit for a before/after on the same "
                             "files (default: this one; the venv's packages either way)")
    args = parser.parse_args()
    global MEASURED
    MEASURED = args.repo.resolve()
    shapes = [s.strip() for s in args.shape.split(",") if s.strip()]
    if not shapes or set(shapes) - {"sample", "mojo3"}:
        parser.error("--shape takes sample, mojo3 or sample,mojo3")
    if args.fraction is not None and args.fractions is not None:
        parser.error("give --fraction or --fractions, not both")
    raw = str(args.fraction) if args.fraction is not None else (args.fractions or "0.25")
    try:
        args.fractions = sorted({float(f) for f in raw.split(",") if f.strip()})
    except ValueError:
        parser.error(f"--fractions: numbers separated by commas, not {raw!r}")
    if not args.fractions or min(args.fractions) <= 0:
        parser.error("--fractions must be positive")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    import torch

    if MEASURED != REPO:
        print(f"measuring the pipeline and code of {MEASURED}")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"(CUDA {'yes' if torch.cuda.is_available() else 'no'}); peak RSS measured by "
          + ("GNU time and psutil" if GNU_TIME else "psutil only (no GNU /usr/bin/time)")
          + f"; dvc and backfill from {BIN}")
    rows: list[Row] = []
    results: dict = {}
    start = time.perf_counter()
    if "sample" in shapes:
        r, results["sample"] = run_sample(args, out)
        rows += r
    if "mojo3" in shapes:
        r, results["mojo3"] = run_mojo3(args, out)
        rows += r
    print_rows(rows)
    print(f"(whole benchmark {time.perf_counter() - start:,.0f}s; this process's peak RSS "
          f"{peak_rss_mib():,.0f} MiB)")
    path = out / f"results_{'_'.join(shapes)}.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "results": results}, indent=1, default=str))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
