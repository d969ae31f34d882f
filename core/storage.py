"""Where the workflow keeps its cache: one project-local folder, never the home directory.

`QUANTIZE_CACHE_DIR` moves it (tests point it at a temporary folder; a cluster points it
at a shared filesystem). Inside it:
  prefect-results/  Prefect's persisted task results and cache records
  work/<step>/...   the files each step produced (decoded image sets, models)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR_ENV = "QUANTIZE_CACHE_DIR"


def cache_root() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / ".cache"


def results_storage_dir() -> Path:
    path = cache_root() / "prefect-results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_work_dir(step: str) -> Path:
    """A fresh folder for one execution of a step; cached results keep pointing at theirs."""
    path = cache_root() / "work" / step / uuid.uuid4().hex[:12]
    path.mkdir(parents=True, exist_ok=True)
    return path
