"""What to commit: the config files a command wrote that git does not hold yet.

An experiment (`dvc exp run`) commits the files git tracks and those staged with
`git add`; a new project's conf/project/<name>.yaml is neither until the user adds it,
so an experiment on it could not be reproduced from its commit. Commands that write
conf/ say the exact line to run. Nothing is ever committed for the user.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path


def uncommitted(root: Path, paths: list[Path]) -> list[str]:
    """Those of ``paths`` that git reports as untracked, added or modified, relative to
    ``root`` (in the order given); [] when git is missing or ``root`` is no repository."""
    rel = [p.relative_to(root).as_posix() for p in paths]

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc if proc.returncode == 0 else None

    prefix = git("rev-parse", "--show-prefix")  # git's paths start at its top folder
    status = prefix and git("status", "--porcelain", "--untracked-files=all", "--", *rel)
    if not status:
        return []
    top = prefix.stdout.strip()
    listed = {line[3:].strip().strip('"') for line in status.stdout.splitlines()
              if len(line) > 3}
    return [r for r in rel if top + r in listed]


def commit_hint(root: Path, paths: list[Path], message: str) -> str | None:
    """One line saying how to commit those of ``paths`` not committed yet, or None."""
    files = uncommitted(root, paths)
    if not files:
        return None
    quoted = " ".join(shlex.quote(f) for f in files)
    here = Path.cwd().resolve() == root.resolve()
    git = "git" if here else f"git -C {shlex.quote(str(root))}"
    return (f"commit what git does not hold yet, so that experiments and clones have it "
            f"(`dvc exp run` leaves out files git does not track): {git} add {quoted} && "
            f"{git} commit -m {shlex.quote(message)}")
