"""The benchmark script runs from the command line; its figures are printed, never asserted."""

import subprocess
import sys

import pytest

from benchmarks.augment import augmented_set
from core.storage import REPO_ROOT


def test_the_benchmark_explains_its_four_figures_and_targets():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_benchmarks", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for target in ("target >= 3x", "rerun < 15% of cold", "target < 10%", "growth < 20%"):
        assert target in result.stdout


def test_the_end_to_end_benchmark_explains_what_it_times_and_its_targets():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.end_to_end", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for target in ("target <= 0.5x (a)", "target <= 0.8x (a)", "target <= 8 s and <= 10% of (c)", "critical path"):
        assert target in result.stdout


def test_the_detection_benchmark_explains_its_figures_and_targets():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.detection", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for figure in ("time per step", "rerun < 15% of cold", "target >= 0.8x", "directly on the same images"):
        assert figure in result.stdout


@pytest.mark.slow
def test_an_enlarged_set_keeps_the_class_layout_and_has_the_count_asked_for(sample_dir, tmp_path):
    dest = augmented_set(sample_dir / "validation", tmp_path / "enlarged", 250)
    files = list(dest.glob("*/*.jpg"))
    assert len(files) == 250 and {f.parent.name for f in files} == {str(d) for d in range(10)}
