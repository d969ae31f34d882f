"""A device compiler's refusal of a model is a verdict on that model, never the end of the run: what Sony's IMX500
converter or Vela said (an unsupported operator, a limit), or how it ended (a crash, a timeout), in a line or two, in
the model's row, its table column and the recommendation. The real converter on a real model: tests/test_hardware.py."""

import json
import zipfile

import pytest

from core.errors import InputError
from core.results.recommend import recommend
from core.results.record_results import require_imx500_fit
from core.results.results_text import device_text, results_table
from core.targets import compile_for_ethos_u as ethos_u_module
from core.targets import compile_for_imx500 as imx500_module
from core.targets.compile_for_ethos_u import compile_for_ethos_u
from core.targets.compile_for_imx500 import compile_for_imx500
from core.targets.compiler_output import last_meaningful_lines
from core.targets.devices import imx500_problem, imx500_verdict
from core.targets.imx500_refusal import refusal_gist, refused_before_memory_planning
from core.targets.records import EthosUReport, Imx500Report

# What imxconv-tf 3.19.0 printed (stdout and stderr, shortened) for an MCT model with an input Rescaling layer...
UNSUPPORTED_OPS = """\
2026-12-07 17:32:17,818 INFO : Running version 3.19.0 [/venv/site-packages/uni/common/logger.py:179]
2026-12-07 17:32:17,818 INFO : Converting tiny/model_quantized.keras [/venv/site-packages/uni/common/logger.py:179]
2026-12-07 17:32:23,024 ERROR : CODE: [USOP] The network contains unsupported ops: \
keras.src.layers.preprocessing.image_preprocessing.Rescaling [/venv/site-packages/uni/common/logger.py:185]
2026-12-07 17:32:18.375096: I external/local_tsl/tsl/cuda/cudart_stub.cc:31] Could not find cuda drivers on your \
machine, GPU will not be used.
"""
# ... and for one with a Dense layer of 12000 outputs.
OVER_A_LIMIT = """\
2026-12-07 17:36:57,751 INFO : Converting big/model_quantized.keras [/venv/site-packages/uni/common/logger.py:179]
2026-12-07 17:37:10,150 ERROR : CODE: [INVOP] The network is not aligned with SDSP converter's restrictions. \
Errors are:
Node [Framework.nnir] op: FullyConnected, id: keras_quantization_wrapper, [Framework.tensorflow] op: \
keras.src.layers.core.dense.Dense, id: keras_quantization_wrapper, errors:
\tParam error - param: output features, value: 12000, reason: Output size exceeds the supported limit of 8192 \
[/venv/site-packages/uni/common/logger.py:185]
"""

# ... and, from its Java back end, for a model too large for the chip's memory.
OVER_THE_MEMORY = """\
2026-12-07 17:45:46.029 INFO : CODE: [START] Starting SDSPconv
2026-12-07 17:50:04.608 ERROR: CODE: [ISM] ConvFe error (ISM) on 'model_quantized': Not enough memory, available: \
8.00MB , required: 13.80MB
2026-12-07 17:50:12,830 ERROR : sdspconv exited with error code: 1, uni files can be found in /tmp/tmpwni87ijy \
[/venv/site-packages/imx500_converter/converter/converter.py:88]
"""


def mct_keras_file(path, layers):
    """A stand-in for MCT's Keras file: a zip whose config.json lists the layers [(class, name, wrapped)]."""

    def layer(class_name, name, wrapped=None):
        config = {
            "name": name,
            **({"layer": {"class_name": wrapped[0], "config": {"name": wrapped[1]}}} if wrapped else {}),
        }
        return {"class_name": class_name, "config": config}

    config = {"class_name": "Functional", "config": {"name": "model", "layers": [layer(*spec) for spec in layers]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return path


def test_an_unsupported_operator_is_named_with_the_layers_of_its_class(tmp_path):
    model = mct_keras_file(tmp_path / "model_quantized.keras", [("InputLayer", "input_1"), ("Rescaling", "rescaling")])
    assert refused_before_memory_planning(UNSUPPORTED_OPS)
    assert refusal_gist(UNSUPPORTED_OPS, model) == "unsupported ops: Rescaling (layer rescaling)"
    assert refusal_gist(UNSUPPORTED_OPS) == "unsupported ops: Rescaling"  # a model it cannot read: the class alone


def test_a_layer_over_the_converters_limits_is_named_through_mcts_wrapper(tmp_path):
    model = mct_keras_file(
        tmp_path / "model_quantized.keras",
        [("KerasQuantizationWrapper", "keras_quantization_wrapper", ("Dense", "dense"))],
    )
    assert refusal_gist(OVER_A_LIMIT, model) == (
        "not within its restrictions: Dense (layer dense): output features 12000: "
        "Output size exceeds the supported limit of 8192"
    )


def test_the_back_ends_coded_error_is_read_before_the_front_ends_exit_notice():
    assert not refused_before_memory_planning(OVER_THE_MEMORY)  # a memory report may say by how much
    assert refusal_gist(OVER_THE_MEMORY) == (
        "ConvFe error (ISM) on 'model_quantized': Not enough memory, available: 8.00MB , required: 13.80MB"
    )


def test_without_an_error_record_the_last_lines_say_it_and_a_traceback_its_exception():
    assert (
        refusal_gist("2026-12-07 17:32:18.375096: I tensorflow/x.cc:1] noise\nJava heap space\n") == "Java heap space"
    )
    traceback = (
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n    ^^^\nKeyError: 'shape'\n"
    )
    assert last_meaningful_lines(traceback) == "KeyError: 'shape'"
    assert last_meaningful_lines("\n\n") == "no message"


def fake_command(path, script):
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_the_converters_refusal_is_a_verdict_and_needs_no_memory_report(tmp_path):
    calls = tmp_path / "calls"
    printed = tmp_path / "printed.txt"
    printed.write_text(UNSUPPORTED_OPS)
    converter = fake_command(tmp_path / "imxconv-tf", f"echo run >> {calls}\ncat {printed}\nexit 2\n")
    report = compile_for_imx500(quantized_keras_path=str(tmp_path / "m.keras"), out_dir=tmp_path, converter=converter)
    assert report.compiled is False and report.skipped is False
    assert report.reason == "refused by the IMX500 converter: unsupported ops: Rescaling"
    assert calls.read_text() == "run\n"  # not run again for a memory report: a refused graph has none
    row = {"imx500": report.as_results()}
    assert imx500_problem(row["imx500"]) == report.reason and imx500_verdict(row["imx500"]) == "refused"


def test_a_model_too_large_for_the_chip_is_a_verdict_with_the_memory_reports_figures(tmp_path):
    memory_report = {
        "Memory Report": {
            "Runtime Memory Physical Size": "89088B",
            "Model Memory Physical Size": "9783968B",
            "Memory Usage": "9874080B",
            "Total Memory Available On Chip": "8388480B",
            "Memory Utilization": "118%",
            "Fit In Chip": False,
        }
    }
    (tmp_path / "report.json").write_text(json.dumps(memory_report))
    (tmp_path / "printed.txt").write_text(OVER_THE_MEMORY)
    script = f'mkdir -p "$4"\ncp {tmp_path}/report.json "$4/m_MemoryReport.json"\ncat {tmp_path}/printed.txt\nexit 1\n'
    converter = fake_command(tmp_path / "imxconv-tf", script)
    report = compile_for_imx500(quantized_keras_path="m.keras", out_dir=tmp_path, converter=converter)
    assert not report.compiled and report.fits is False and report.folder == str(tmp_path / "imx500")
    assert report.reason == "does not fit the IMX500: 9,874,080 bytes needed, 8,388,480 available (118%)"
    assert imx500_problem(report.as_results()) == "does not fit the IMX500 (118% of its memory)"
    assert imx500_verdict(report.as_results()) == "no"


def test_a_converter_killed_by_a_signal_or_out_of_time_is_a_verdict_saying_so(tmp_path, monkeypatch):
    crashing = fake_command(tmp_path / "crashing", "echo converting\nkill -SEGV $$\n")
    report = compile_for_imx500(quantized_keras_path="m.keras", out_dir=tmp_path, converter=crashing)
    assert not report.compiled and report.reason == "the IMX500 converter crashed (killed by SIGSEGV): converting"
    monkeypatch.setattr(imx500_module, "TIMEOUT_S", 1)
    slow = fake_command(tmp_path / "slow", "exec sleep 30\n")
    report = compile_for_imx500(quantized_keras_path="m.keras", out_dir=tmp_path, converter=slow)
    assert not report.compiled and report.reason == "the IMX500 converter did not finish within 1 s"


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (
            'echo "Warning: No configuration file specified."\necho "Error: Unsupported tensor shape"\nexit 1\n',
            "refused by Vela: Error: Unsupported tensor shape",
        ),
        (
            'echo "Traceback (most recent call last):" >&2\necho "RuntimeError: Compilation failed" >&2\nexit 1\n',
            "refused by Vela: RuntimeError: Compilation failed",
        ),
        ("echo compiling\nkill -SEGV $$\n", "Vela crashed (killed by SIGSEGV): compiling"),
    ],
)
def test_vela_failing_on_a_model_is_a_verdict(tmp_path, monkeypatch, script, reason):
    vela = fake_command(tmp_path / "vela", script)
    monkeypatch.setattr(ethos_u_module, "vela_executable", lambda: vela)
    report = compile_for_ethos_u(
        model_path=str(tmp_path / "model_full_int8.tflite"),
        variant="full_int8",
        accelerator="ethos-u55-128",
        out_dir=tmp_path,
    )
    assert report == EthosUReport(compiled=False, accelerator="ethos-u55-128", reason=reason)


REFUSED = Imx500Report(
    compiled=False,
    skipped=False,
    reason="refused by the IMX500 converter: unsupported ops: Rescaling (layer rescaling)",
)


def row(name, top_1, **reports):
    return {
        "model": name,
        "description": name,
        "top_1_accuracy": top_1,
        "top_5_accuracy": 1.0,
        "top_1_change_vs_keras": 0.0,
        "agreement_with_keras": 1.0,
        "file_size_bytes": 27 * 1024,
        "latency_ms": {"1_thread": None, "all_threads": None},
        "file": f"out/{name}.tflite" if name != "keras" else "model.h5",
        "input_dtype": "float32",
        "output_dtype": "float32",
        "image_count": 10,
        **reports,
    }


def test_a_refused_model_reads_as_refused_in_its_row_the_text_and_the_recommendation():
    vela_failed = EthosUReport.failed("ethos-u55-128", "Vela crashed (killed by SIGSEGV): compiling")
    models = [
        row("keras", 0.9),
        row("tflite", 0.9, ethos_u=EthosUReport.declined("float32").as_results()),
        row("tflite_quantized", 0.89, imx500=REFUSED.as_results()),
        row("tflite_full_int8", 0.88, ethos_u=vela_failed.as_results()),
    ]
    choice = recommend(models, 0.05, "size", "imx500")
    assert choice.chosen is None and choice.reason == (
        "no TFLite model can go to imx500: tflite_quantized: "
        "refused by the IMX500 converter: unsupported ops: Rescaling (layer rescaling)"
    )
    results = {"models": models, "task": "classification"}
    assert results_table(results)["imx500_fits"].tolist() == [None, None, "refused", None]
    assert device_text(results) == (
        "Not for the IMX500: tflite_quantized: refused by the IMX500 converter: unsupported ops: Rescaling "
        "(layer rescaling)\nNot for ethos-u55-128: tflite_full_int8: Vela crashed (killed by SIGSEGV): compiling\n"
    )
    assert recommend(models, 0.05, "size", "ethos-u55-128").rejected[-1].reason == vela_failed.reason


def test_a_refused_model_fails_a_run_that_requires_the_fit_with_the_converters_reason():
    class Config:
        imx500_require_fit = True

    with pytest.raises(InputError, match=r"does not go to the IMX500: refused by the IMX500 converter: unsupported"):
        require_imx500_fit(Config, {"hardware": {"imx500": REFUSED.as_results()}})
