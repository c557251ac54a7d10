#!/usr/bin/env python3
"""Does requirements.lock install on another platform? Checked from this machine, pin by pin.

For each target (macOS arm64, Windows x86_64, Linux x86_64/aarch64) and Python version it
keeps the pins whose environment markers hold there, then looks up each pin on the package
index: a wheel for that platform and Python must exist (or, for the few pure-Python
packages published only as source, the source archive). It reads the index's file lists
only (PEP 691 JSON), so it downloads no wheel and takes seconds.

``--pip`` instead asks pip itself, pin by pin (``install --dry-run --no-deps
--only-binary=:all: --platform ... --python-version ...``); pip downloads every wheel to
read it, hundreds of MB per target, so that is for a check by hand.

pip evaluates a requirement file's markers against the Python running it, never against
``--platform``, so both ways evaluate the markers here, for the target, first.

Usage: python scripts/check_lock.py [TARGET ...] [--python 3.12 ...] [--pip]
Exit status: 0 every pin resolves, 1 some do not, 3 the package index cannot be reached.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PYTHONS = ("3.11", "3.12")
UNREACHABLE = 3

# Marker variables of each target, and the wheel platforms it runs (newest first).
TARGETS: dict[str, tuple[dict[str, str], list[str]]] = {
    "macos-arm64": ({"sys_platform": "darwin", "platform_system": "Darwin",
                     "platform_machine": "arm64", "os_name": "posix"},
                    list(mac_platforms((14, 0), "arm64"))),
    "windows-amd64": ({"sys_platform": "win32", "platform_system": "Windows",
                       "platform_machine": "AMD64", "os_name": "nt"}, ["win_amd64"]),
    **{f"linux-{arch}": ({"sys_platform": "linux", "platform_system": "Linux",
                          "platform_machine": arch, "os_name": "posix"},
                         # glibc 2.28 (torch's floor) runs every older manylinux
                         [f"manylinux_2_{minor}_{arch}" for minor in range(28, 4, -1)]
                         + [f"manylinux{old}_{arch}" for old in ("2014", "2010", "1")])
       for arch in ("x86_64", "aarch64")},
}

# Pure-Python packages published only as a source archive: one file for every platform.
SOURCE_ONLY = frozenset({"antlr4-python3-runtime"})


@dataclass
class Result:
    target: str
    python: str
    pins: int
    missing: list[str] = field(default_factory=list)  # "name==version: why"
    offline: str = ""  # why the index could not be asked, when it could not

    @property
    def ok(self) -> bool:
        return not self.missing and not self.offline


def read_pins(lock: Path = LOCK) -> list[Requirement]:
    """Every requirement line of the lock (comments and ``# via`` lines skipped)."""
    pins = []
    for line in lock.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            pins.append(Requirement(line))
    return pins


def environment(target: str, python: str) -> dict[str, str]:
    """The marker variables of ``target`` running CPython ``python`` (e.g. "3.12")."""
    env = dict(TARGETS[target][0])
    env.update(python_version=python, python_full_version=f"{python}.0",
               implementation_name="cpython", platform_python_implementation="CPython",
               implementation_version=f"{python}.0", platform_release="", platform_version="")
    return env


def pins_for(pins: Iterable[Requirement], target: str, python: str) -> list[Requirement]:
    """The pins whose markers hold on ``target`` with ``python``."""
    env = environment(target, python)
    return [r for r in pins if r.marker is None or r.marker.evaluate(env)]


def pinned_version(req: Requirement) -> Version:
    """The one version a lock line allows (``name==version``)."""
    (spec,) = req.specifier
    if spec.operator != "==" or "*" in spec.version:
        raise ValueError(f"{req}: a lock line must pin one version with ==")
    return Version(spec.version)


def supported_tags(target: str, python: str) -> set[Tag]:
    """The wheel tags a CPython ``python`` on ``target`` installs."""
    version = tuple(int(p) for p in python.split("."))
    platforms = TARGETS[target][1]
    return set(cpython_tags(version, platforms=platforms)) | set(
        compatible_tags(version, f"cp{version[0]}{version[1]}", platforms=platforms))


def why_missing(req: Requirement, files: list[dict], tags: set[Tag], python: str) -> str:
    """Empty when one of the index's ``files`` installs ``req`` there, else why not."""
    name, version = canonicalize_name(req.name), pinned_version(req)
    written, normal = next(iter(req.specifier)).version, str(version)
    seen = 0
    for f in files:
        filename, needs = f["filename"], f.get("requires-python") or ""
        if written not in filename and normal not in filename:
            continue  # another release: cheap to tell, and most of the list
        try:  # old releases carry names no installer accepts: skipped, as pip does
            if filename.endswith(".whl"):
                fname, fversion, _, ftags = parse_wheel_filename(filename)
                fits = not tags.isdisjoint(ftags)
            elif filename.endswith((".tar.gz", ".zip")):
                fname, fversion = parse_sdist_filename(filename)
                fits = name in SOURCE_ONLY
            else:
                continue
        except ValueError:
            continue
        if canonicalize_name(fname) != name or fversion != version:
            continue
        seen += 1
        if fits and (not needs or SpecifierSet(needs).contains(python + ".0")):
            return ""
    if not seen:
        return "no such release on the index"
    return f"none of its {seen} files installs here (platform, Python or source-only)"


def index_url() -> str:
    """The index pip would ask first (PIP_INDEX_URL, else PyPI)."""
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


@functools.cache
def _tls() -> ssl.SSLContext:
    """The system's certificates, and certifi's where it is installed (python.org's
    macOS builds come with no system certificates set up)."""
    context = ssl.create_default_context()
    try:
        import certifi
    except ImportError:
        return context
    context.load_verify_locations(certifi.where())
    return context


def index_files(name: str, base: str, timeout: float = 30) -> list[dict]:
    """The files the index lists for project ``name`` (PEP 691 JSON)."""
    request = urllib.request.Request(
        f"{base}/{canonicalize_name(name)}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=timeout, context=_tls()) as response:
        return json.load(response)["files"]


def _unreachable(base: str, exc: Exception) -> str:
    return f"{base} cannot be reached ({getattr(exc, 'reason', exc)})"


def check_index(pins: list[Requirement], pairs: list[tuple[str, str]],
                base: str | None = None) -> list[Result]:
    """Each (target, python) pair, from one look-up of each package on the index."""
    base = base or index_url()
    names = sorted({canonicalize_name(r.name) for r in pins})
    try:  # one cheap request first: offline users get one line, not 150 errors
        first = index_files(names[0], base, timeout=10)
    except (urllib.error.URLError, OSError) as exc:
        return [Result(t, p, 0, offline=_unreachable(base, exc)) for t, p in pairs]

    def fetch(name: str) -> tuple[str, list[dict] | str | Exception]:
        try:
            return name, index_files(name, base)
        except urllib.error.HTTPError as exc:  # the index answered: no such project
            return name, f"the index answered {exc.code}"
        except (urllib.error.URLError, OSError) as exc:  # the network dropped
            return name, exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        files = dict(pool.map(fetch, names[1:]))
    files[names[0]] = first
    dropped = [exc for exc in files.values() if isinstance(exc, Exception)]
    if dropped:
        return [Result(t, p, 0, offline=_unreachable(base, dropped[0])) for t, p in pairs]
    results = []
    for target, python in pairs:
        chosen = pins_for(pins, target, python)
        tags = supported_tags(target, python)
        result = Result(target, python, len(chosen))
        for req in chosen:
            listed = files[canonicalize_name(req.name)]
            why = listed if isinstance(listed, str) else why_missing(req, listed, tags, python)
            if why:
                result.missing.append(f"{req.name}{req.specifier}: {why}")
        results.append(result)
    return results


def check_pip(pins: list[Requirement], target: str, python: str) -> Result:
    """pip's own answer: ``install --dry-run`` of the pins that apply on ``target``."""
    chosen = pins_for(pins, target, python)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "pins.txt"
        req.write_text("".join(f"{r.name}{r.specifier}\n" for r in chosen))
        platforms = [arg for p in TARGETS[target][1] for arg in ("--platform", p)]
        # --target: pip 23 refuses --platform without it; --dry-run writes nothing there.
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
             "--ignore-installed", "--disable-pip-version-check", "--only-binary=:all:",
             f"--no-binary={','.join(sorted(SOURCE_ONLY))}", *platforms,
             "--python-version", python, "--target", str(Path(tmp) / "t"), "-r", str(req)],
            capture_output=True, text=True)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("ERROR")]
    result = Result(target, python, len(chosen))
    if proc.returncode:
        result.missing = errors[-1:] or [f"pip exited {proc.returncode}"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"one of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--python", action="append", dest="pythons",
                        help=f"a Python version (default: {', '.join(PYTHONS)})")
    parser.add_argument("--pip", action="store_true",
                        help="ask pip install --dry-run (downloads every wheel)")
    parser.add_argument("--lock", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}: use {', '.join(TARGETS)}")
    pins = read_pins(args.lock)
    pairs = [(t, p) for t in args.targets or TARGETS for p in args.pythons or PYTHONS]
    results = ([check_pip(pins, t, p) for t, p in pairs] if args.pip
               else check_index(pins, pairs))
    for r in results:
        state = "ok" if r.ok else "OFFLINE: " + r.offline if r.offline else "FAILS"
        print(f"{r.target:14} python {r.python}  {r.pins:3} pins  {state}")
        for line in r.missing:
            print(f"    {line}")
    if any(r.offline for r in results):
        return UNREACHABLE
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
