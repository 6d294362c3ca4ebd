"""Where the public data sets live: the data root (flag, environment, then ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

from gradguide.errors import GradguideError

#: Environment variable naming the data root (the folder holding superglue/, classification/, …).
DATA_ENV = "GRADGUIDE_DATA"

#: The source tree's repository root (src/gradguide/tasks/dataroot.py → three levels up).
_REPO_ROOT = Path(__file__).resolve().parents[3]

HOW_TO_PROVIDE = (
    f"pass --data-dir DIR or set {DATA_ENV}=DIR, where DIR holds the suite folders "
    "(superglue/, fewglue/, classification/, domain/) laid out as in shared/data/MANIFEST.md"
)


def default_data_roots() -> list[Path]:
    """The places searched when neither an explicit root nor the environment names one."""
    return [_REPO_ROOT.parent / "shared" / "data", Path.cwd() / ".." / "shared" / "data"]


def resolve_data_root(explicit: str | Path | None = None) -> Path | None:
    """Find the data root: explicit argument, then $GRADGUIDE_DATA, then ../shared/data; else None.

    An explicit argument or environment value that is not a directory is an error, not a silent
    fall-through, so a typo never quietly picks other data.
    """
    if explicit is not None and str(explicit) != "":
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise GradguideError(f"data directory {root} does not exist (given with --data-dir)")
        return root.resolve()
    env = os.environ.get(DATA_ENV, "")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise GradguideError(f"data directory {root} does not exist (named by ${DATA_ENV})")
        return root.resolve()
    for candidate in default_data_roots():
        if candidate.is_dir():
            return candidate.resolve()
    return None
