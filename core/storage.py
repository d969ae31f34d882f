"""Where the workflow keeps its cache: one project-local folder, never the home directory.

`QUANTIZE_CACHE_DIR` moves it (tests point it at a temporary folder; a cluster points it
at a shared filesystem). Inside it:
  prefect-results/  Prefect's persisted task results and cache records
  work/<step>/...   the files each step produced (decoded image sets, models)
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR_ENV = "QUANTIZE_CACHE_DIR"


def cache_root() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / ".cache"


def results_storage_dir() -> Path:
    path = cache_root() / "prefect-results"
    path.mkdir(parents=True, exist_ok=True)
    return path


GENERATION_FILE = ".generation"


def work_generation() -> str:
    """An id of the work folder's present life: deleting `work/` (say, to free space) starts a new one, so that
    cache records pointing at the deleted files are no longer used and the steps recompute."""
    work = cache_root() / "work"
    marker = work / GENERATION_FILE
    try:
        return marker.read_text().strip()
    except FileNotFoundError:
        work.mkdir(parents=True, exist_ok=True)
        fresh = uuid.uuid4().hex
        try:  # O_EXCL: two processes starting a generation at once agree on the first one written
            with open(marker, "x") as f:
                f.write(fresh)
        except FileExistsError:
            pass
        return marker.read_text().strip()


def remembered_file(folder: str, parts: Any, suffix: str) -> Path:
    """Where something computed once per content is kept: `work/<folder>/`, named by the digest of the JSON-able
    `parts` it was computed from (a version among them, so that a change of how it is computed starts afresh)."""
    key = hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()
    return cache_root() / "work" / folder / f"{key}{suffix}"


def new_work_dir(step: str) -> Path:
    """A fresh folder for one execution of a step; cached results keep pointing at theirs."""
    path = cache_root() / "work" / step / uuid.uuid4().hex[:12]
    path.mkdir(parents=True, exist_ok=True)
    return path
