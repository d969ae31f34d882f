"""What every in-process benchmark starts with: a scratch folder of its own, whose cache and Prefect database make
its cold runs cold, and a project configuration rewritten to write there."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from core.storage import REPO_ROOT  # reads QUANTIZE_CACHE_DIR only when called, so it can still be set


def isolated_scratch(prefix: str, parent: Path | None = None) -> Path:
    """A fresh folder with the cache and the Prefect home inside it; set before Prefect and the flow load."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.environ.update(
        {
            "QUANTIZE_CACHE_DIR": str(scratch / "cache"),
            "PREFECT_HOME": str(scratch / "prefect-home"),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
    )
    os.environ.pop("PREFECT_API_URL", None)
    return scratch


def scratch_configuration(name: str, scratch: Path) -> Path:
    """configs/<name>/configuration.json with its inputs made absolute and its outputs in `scratch`, written there.
    Call it after isolated_scratch: the configuration's module imports the project's."""
    from core.config import OPTIONAL_PATH_KEYS, PATH_KEYS

    folder = REPO_ROOT / "configs" / name
    config = json.loads((folder / "configuration.json").read_text())
    for key in (*PATH_KEYS, *OPTIONAL_PATH_KEYS):
        if key not in ("output_dir", "evaluate_result_dir") and config.get(key) is not None:
            config[key] = str((folder / config[key]).resolve())
    config.update(output_dir=str(scratch / "out" / "models"), evaluate_result_dir=str(scratch / "out" / "results"))
    path = scratch / "configuration.json"
    path.write_text(json.dumps(config))
    return path
