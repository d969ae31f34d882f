"""Published files get the permissions of any new file, honouring the umask (mkstemp alone would make them
private, 0600, and a published folder 0700): a team sharing an output folder can read what a run wrote."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from core.storage import REPO_ROOT

PUBLISH_EVERY_WAY = """
    import json, os, stat, sys
    from pathlib import Path
    import numpy as np
    from core.files import (
        atomic_copy, atomic_copy_tree, atomic_save_numpy, atomic_write_bytes, atomic_write_json, atomic_write_text,
        umask,
    )

    os.umask(int(sys.argv[2], 8))
    out = Path(sys.argv[1])
    source = out / "source"
    source.mkdir()
    (source / "packerOut.zip").write_bytes(b"zip")
    published = {
        "text": atomic_write_text(out / "results.csv", "a,b\\n"),
        "bytes": atomic_write_bytes(out / "model.tflite", b"model"),
        "json": atomic_write_json(out / "results.json", {"a": 1}),
        "copy": atomic_copy(source / "packerOut.zip", out / "model_quantized.tflite"),
        "numpy": atomic_save_numpy(out / "images.npy", np.zeros(3)),
        "folder": atomic_copy_tree(source, out / "imx500"),
    }
    modes = {name: oct(stat.S_IMODE(path.stat().st_mode)) for name, path in published.items()}
    print(json.dumps({"modes": modes, "umask": oct(umask())}))
"""


@pytest.mark.parametrize("mask, file_mode, folder_mode", [("022", "0o644", "0o755"), ("027", "0o640", "0o750")])
def test_published_files_and_folders_honour_the_umask(tmp_path, mask, file_mode, folder_mode):
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PUBLISH_EVERY_WAY), str(tmp_path), mask],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["umask"] == "0o" + mask.lstrip("0")  # read without being changed
    assert report["modes"] == {
        "text": file_mode,
        "bytes": file_mode,
        "json": file_mode,
        "copy": file_mode,
        "numpy": file_mode,
        "folder": folder_mode,
    }
