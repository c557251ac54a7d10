"""requirements.lock installs on macOS arm64, Windows and Linux: checked without those
machines, by evaluating its markers for each and asking the package index for each pin."""

from __future__ import annotations

import importlib.util
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name

from tests.conftest import REPO


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_lock", REPO / "scripts" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


check_lock = _load_checker()
PINS = check_lock.read_pins()
PAIRS = [(t, p) for t in check_lock.TARGETS for p in check_lock.PYTHONS]
GPU_ONLY = ("nvidia-", "cuda-", "triton")


def names(pins) -> set[str]:
    return {canonicalize_name(r.name) for r in pins}


def test_every_line_pins_one_version_once():
    assert len(PINS) > 100
    for req in PINS:
        check_lock.pinned_version(req)  # raises on a range
    assert len(names(PINS)) == len(PINS)


@pytest.mark.parametrize("target,python", PAIRS)
def test_each_dependency_is_pinned_within_its_range_on_each_platform(target, python):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(d) for d in
              project["dependencies"] + project["optional-dependencies"]["test"]]
    pinned = {canonicalize_name(r.name): check_lock.pinned_version(r)
              for r in check_lock.pins_for(PINS, target, python)}
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{name} is not in the lock for {target}: run `make lock`"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} not {req}"


def test_cuda_packages_are_pinned_for_linux_only():
    for target, python in PAIRS:
        gpu = {n for n in names(check_lock.pins_for(PINS, target, python))
               if n.startswith(GPU_ONLY)}
        if target.startswith("linux"):
            assert {"triton", "nvidia-cublas", "cuda-toolkit"} <= gpu, target
        else:
            assert gpu == set(), f"{target} would install {sorted(gpu)}"


def test_markers_are_evaluated_for_the_target_not_this_machine():
    pins = [Requirement("a==1 ; sys_platform == 'darwin'"),
            Requirement("b==1 ; sys_platform == 'win32' and python_version >= '3.12'"),
            Requirement("c==1 ; platform_machine == 'aarch64'"), Requirement("d==1")]
    assert names(check_lock.pins_for(pins, "macos-arm64", "3.11")) == {"a", "d"}
    assert names(check_lock.pins_for(pins, "windows-amd64", "3.11")) == {"d"}
    assert names(check_lock.pins_for(pins, "windows-amd64", "3.12")) == {"b", "d"}
    assert names(check_lock.pins_for(pins, "linux-aarch64", "3.12")) == {"c", "d"}


def test_a_range_is_not_a_pin():
    with pytest.raises(ValueError, match="pin one version"):
        check_lock.pinned_version(Requirement("torch>=2"))


def fits(pin: str, filenames: list[str], target: str, python: str,
         requires_python: str | None = None) -> str:
    files = [{"filename": f, "requires-python": requires_python} for f in filenames]
    return check_lock.why_missing(Requirement(pin), files, check_lock.supported_tags(
        target, python), python)


@pytest.mark.parametrize("filename,target,python", [
    ("foo-1.0-cp312-cp312-macosx_11_0_arm64.whl", "macos-arm64", "3.12"),
    ("foo-1.0-cp311-cp311-macosx_10_9_universal2.whl", "macos-arm64", "3.11"),
    ("foo-1.0-cp39-abi3-win_amd64.whl", "windows-amd64", "3.12"),
    ("foo-1.0-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.whl", "linux-x86_64", "3.11"),
    ("foo-1.0-cp312-cp312-manylinux_2_28_aarch64.whl", "linux-aarch64", "3.12"),
    ("foo-1.0-py3-none-any.whl", "windows-amd64", "3.11"),
])
def test_a_wheel_for_the_platform_resolves(filename, target, python):
    assert fits("foo==1.0", [filename], target, python) == ""


@pytest.mark.parametrize("filename,target,python", [
    ("foo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "macos-arm64", "3.12"),
    ("foo-1.0-cp312-cp312-macosx_11_0_x86_64.whl", "macos-arm64", "3.12"),  # Intel only
    ("foo-1.0-cp311-cp311-win_amd64.whl", "windows-amd64", "3.12"),  # another Python
    ("foo-1.0-cp312-cp312-manylinux_2_34_x86_64.whl", "linux-x86_64", "3.12"),  # newer glibc
    ("foo-1.0.tar.gz", "linux-x86_64", "3.12"),  # would be built from source
])
def test_no_wheel_for_the_platform_is_reported(filename, target, python):
    assert "none of its 1 files" in fits("foo==1.0", [filename], target, python)


def test_release_python_and_source_only_rules():
    assert fits("foo==1.0", ["foo-1.1-py3-none-any.whl"], "macos-arm64", "3.12") \
        == "no such release on the index"
    assert fits("foo==1.0", ["foo-1.0-py3-none-any.whl"], "macos-arm64", "3.11",
                requires_python=">=3.12") != ""
    assert fits("foo==1.0", ["foo-1.0-py3-none-any.whl"], "macos-arm64", "3.12",
                requires_python=">=3.12") == ""
    source = "antlr4-python3-runtime==4.9.3"
    assert fits(source, ["antlr4-python3-runtime-4.9.3.tar.gz"], "windows-amd64", "3.12") == ""
    # names no installer accepts are passed over, not fatal
    assert fits("foo==1.0", ["foo-1.0-py36+-none-any.whl", "foo-1.0-py3-none-any.whl"],
                "macos-arm64", "3.12") == ""


def test_macos_takes_universal2_and_older_macos_wheels():
    tags = check_lock.supported_tags("macos-arm64", "3.12")
    assert Tag("cp312", "cp312", "macosx_14_0_arm64") in tags
    assert Tag("cp312", "cp312", "macosx_10_13_universal2") in tags
    assert Tag("cp312", "cp312", "macosx_15_0_arm64") not in tags


@pytest.mark.slow  # asks the package index about every pin
def test_the_lock_resolves_on_the_index_for_every_platform():
    results = check_lock.check_index(PINS, PAIRS)
    offline = [r.offline for r in results if r.offline]
    if offline:
        pytest.skip(f"cannot check the lock against the package index: {offline[0]}")
    failing = {f"{r.target} python {r.python}": r.missing for r in results if not r.ok}
    assert failing == {}
    assert {r.target for r in results} >= {"macos-arm64", "windows-amd64"}
