"""A successful run leaves in output_dir only what it made, and never a file it did not make itself."""

from core.results.record_results import remove_stale_outputs


def test_outputs_of_an_earlier_run_that_this_run_did_not_make_are_removed_and_listed(tmp_path):
    for name in ("model.tflite", "model_float16.tflite", "model_full_int8_vela.tflite", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "imx500").mkdir()
    (tmp_path / "imx500" / "packerOut.zip").write_bytes(b"x")

    removed = remove_stale_outputs(tmp_path, kept={"model.tflite"}, imx500_published=False)

    assert removed == ["model_float16.tflite", "model_full_int8_vela.tflite", "imx500/"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "notes.txt"]  # the user's own file stays


def test_nothing_is_removed_when_the_run_made_it_all(tmp_path):
    (tmp_path / "model_float16.tflite").write_bytes(b"x")
    (tmp_path / "imx500").mkdir()
    assert remove_stale_outputs(tmp_path, kept={"model_float16.tflite"}, imx500_published=True) == []
    assert (tmp_path / "imx500").is_dir()


def test_the_converter_output_of_an_earlier_repaired_model_goes_unless_this_run_repaired_one_too(tmp_path):
    (tmp_path / "imx500_repaired").mkdir()
    (tmp_path / "imx500_repaired" / "packerOut.zip").write_bytes(b"x")
    assert remove_stale_outputs(tmp_path, kept={"imx500_repaired"}, imx500_published=False) == []
    assert remove_stale_outputs(tmp_path, kept=set(), imx500_published=False) == ["imx500_repaired/"]
    assert not (tmp_path / "imx500_repaired").exists()
