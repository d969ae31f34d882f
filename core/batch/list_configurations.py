"""Batch step 1: the configurations to run: the files given, or every `configuration.json`
below a folder (one folder per model, as in `configs/<model>/configuration.json`)."""

from __future__ import annotations

from pathlib import Path

from core.errors import InputError

CONFIG_FILE_NAME = "configuration.json"


def list_configurations(*, config_dir: str | None = None, config_paths: list[str] | None = None) -> list[str]:
    """Absolute paths, sorted, without duplicates; relative ones resolve against the working directory."""
    found: list[Path] = [Path(p) for p in config_paths or []]
    if config_dir:
        folder = Path(config_dir)
        if not folder.is_dir():
            raise InputError(
                f"config_dir {config_dir!r} ({folder.resolve()}) is not a folder; expected a folder holding "
                f"<model>/{CONFIG_FILE_NAME} files"
            )
        below = sorted(folder.rglob(CONFIG_FILE_NAME))
        if not below:
            raise InputError(
                f"config_dir {config_dir!r}: no {CONFIG_FILE_NAME} anywhere below {folder.resolve()}; add one folder "
                "per model"
            )
        found += below
    if not found:
        raise InputError(
            "no configurations given: set config_dir (a folder of <model>/configuration.json) or config_paths (a "
            "list of files)"
        )
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise InputError(f"config_paths: {missing} do not exist or are not files; expected configuration JSON files")
    return sorted({str(p.resolve()) for p in found})
