"""A latency taken while other work loads the CPU is timed again after a pause, and, when no quiet moment came,
says so: in its record, in results.json's row and in the tables (core/evaluate/measure_latency.py)."""

import multiprocessing
import os

import numpy as np
import pytest

from core.evaluate import measure_latency as latency
from core.evaluate.measure_latency import MIN_CPU_SHARE, Timing, contended, cpu_share, quiet_timing, tflite_latency
from core.evaluate.records import Latency
from core.kinds.records import ClassificationEvaluation
from core.kinds.registry import kind_named
from core.results.build_results import model_row
from core.results.report import html_report
from core.results.results_text import format_table, summary_markdown


def _spin() -> None:
    while True:
        pass


@pytest.fixture
def tiny_tflite(tmp_path):
    """Two convolutions on a 64 x 64 image: about a millisecond a call, long enough for the scheduler to share the
    CPU out within a timing."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((64, 64, 3)),
            tf.keras.layers.Conv2D(32, 3, activation="relu"),
            tf.keras.layers.Conv2D(32, 3),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(4),
        ]
    )
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def _evaluation(model: str) -> ClassificationEvaluation:
    return ClassificationEvaluation.counted(
        model=model,
        model_path=f"/work/{model}",
        correct=2,
        correct_top_5=2,
        seconds=0.1,
        confusion_matrix=[[1, 0], [0, 1]],
        predicted=[0, 1],
        shard=(0, 2),
    )


def test_a_latency_timed_while_every_core_is_busy_says_so_in_its_record_and_results_row(tiny_tflite):
    image = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    # More busy processes than cores (forked: they only spin), from before the timing until after it.
    busy = [
        multiprocessing.get_context("fork").Process(target=_spin, daemon=True) for _ in range(2 * os.cpu_count() + 1)
    ]
    try:
        for process in busy:
            process.start()
        measured = tflite_latency(model_path=str(tiny_tflite), image=image, repeats=50)
    finally:
        for process in busy:
            process.terminate()
        for process in busy:
            process.join()

    assert measured.under_load, measured
    assert set(measured.under_load) <= {"1_thread", "all_threads"}
    assert measured.load and "CPU share the timing got" in measured.load

    row = model_row(
        name="tflite",
        description="TFLite float32",
        published=str(tiny_tflite),
        source=str(tiny_tflite),
        evaluation=_evaluation("tflite"),
        latency=measured,
        reference=_evaluation("keras"),
        class_names=["a", "b"],
        built=None,
        kind=kind_named("classification"),
    )
    assert row["latency_under_load"] == list(measured.under_load)
    assert row["latency_load"] == measured.load
    assert row["latency_ms"] == {"1_thread": measured.one_thread_ms, "all_threads": measured.all_threads_ms}


@pytest.mark.parametrize(
    ("cpu_seconds", "ready_seconds", "expected"),
    [
        (1.0, 1.0, False),  # the timing's thread ran whenever it was ready to
        (0.95, 1.0, False),
        (MIN_CPU_SHARE, 1.0, False),
        (0.5, 1.0, True),  # it waited as long for a CPU as it ran
        (0.8, 1.25, True),  # all threads: 0.8 CPU seconds among them, 0.45 s waiting for a CPU
        (7.9, 8.0, False),  # eight threads, each nearly always on a CPU when ready
        (0.0, 0.0, False),  # nothing measured
        (1.02, 1.0, False),  # the clocks' granularity: never more than all of it
    ],
)
def test_a_timing_is_contended_when_its_threads_got_too_little_of_the_cpu_they_were_ready_to_use(
    cpu_seconds, ready_seconds, expected
):
    assert contended(cpu_seconds, ready_seconds) is expected
    assert 0.0 <= cpu_share(cpu_seconds, ready_seconds) <= 1.0


@pytest.fixture
def timings(monkeypatch):
    """quiet_timing's timings, given in advance; no pause between them."""
    given: list[Timing] = []
    monkeypatch.setattr(latency, "timing", lambda run, image, repeats: given.pop(0))
    monkeypatch.setattr(latency, "QUIET_WAIT_S", 0.0)
    return given


def test_a_loaded_timing_is_timed_again_and_the_first_quiet_one_kept(timings):
    timings += [Timing(ms=9.0, cpu_share=0.3), Timing(ms=1.0, cpu_share=0.99), Timing(ms=5.0, cpu_share=1.0)]

    assert quiet_timing(print, np.zeros(1), 3, deadline=float("inf")) == Timing(ms=1.0, cpu_share=0.99)
    assert len(timings) == 1  # no timing after the quiet one


def test_without_a_quiet_moment_the_least_loaded_timing_is_kept_after_the_last_attempt(timings):
    timings += [Timing(ms=9.0, cpu_share=0.3), Timing(ms=4.0, cpu_share=0.6), Timing(ms=7.0, cpu_share=0.4)] * 2

    kept = quiet_timing(print, np.zeros(1), 3, deadline=float("inf"))

    assert kept == Timing(ms=4.0, cpu_share=0.6) and kept.under_load
    assert len(timings) == 6 - latency.QUIET_ATTEMPTS


def test_no_retry_starts_past_the_deadline(timings):
    timings += [Timing(ms=9.0, cpu_share=0.3), Timing(ms=1.0, cpu_share=1.0)]

    assert quiet_timing(print, np.zeros(1), 3, deadline=0.0) == Timing(ms=9.0, cpu_share=0.3)


def _results(row_load: dict) -> dict:
    model = {
        "model": "tflite",
        "description": "TFLite float32",
        "file": "/out/models/model.tflite",
        "file_size_bytes": 4096,
        "top_1_accuracy": 0.9,
        "top_5_accuracy": 1.0,
        "top_1_change_vs_keras": 0.0,
        "agreement_with_keras": 1.0,
        "per_class_accuracy": {"a": 0.9, "b": 0.9},
        "confusion_matrix": [[9, 1], [1, 9]],
        "latency_ms": {"1_thread": 2.2, "all_threads": 20.6},
        "input_dtype": "float32",
        "output_dtype": "float32",
        "image_count": 20,
        **row_load,
    }
    return {
        "class_names": ["a", "b"],
        "class_count": 2,
        "image_count": 20,
        "models": [model],
        "recommendation": {
            "chosen": "tflite",
            "objective": "size",
            "max_accuracy_drop": 0.05,
            "reason": "smallest file",
            "rejected": [],
            "closest": None,
        },
        "quantization": {"mct_version": "2.6", "target_platform": "default"},
        "latency_machine": "a test machine",
        "unsupported_variants": {},
        "report": "/out/results/report.html",
        "configuration": "/out/configuration.json",
    }


def test_the_tables_and_the_report_mark_a_latency_taken_under_load_and_say_why_once():
    load = "CPU share the timing got: 1 thread 97%, all threads 31%; load average 5.20 on 2 cores"
    results = _results({"latency_under_load": ["all_threads"], "latency_load": load})

    table = format_table(results)
    assert "20.6*" in table and "2.2*" not in table
    assert table.count("taken while other work loaded the CPU") == 1
    assert "latency_repeats" in table
    markdown = summary_markdown(results)
    assert "| 20.6* |" in markdown and "\\* latency taken while other work loaded the CPU" in markdown
    report = html_report(results)
    assert "20.60<span" in report and load in report
    assert report.count("taken while other work loaded the CPU") == 1


def test_a_row_without_the_flag_a_results_json_written_before_it_is_not_marked():
    for results in (_results({}), _results({"latency_under_load": [], "latency_load": None})):
        assert "*" not in format_table(results).split("Recommended")[0]
        assert "taken while other work loaded the CPU" not in html_report(results)


def test_a_latency_record_of_before_the_flag_loads_as_taken_quiet():
    old = Latency.model_validate({"one_thread_ms": 2.2, "all_threads_ms": 1.1, "repeats": 20, "machine": "m"})
    assert old.under_load == () and old.load is None
