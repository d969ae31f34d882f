"""A command starts quickly: Prefect's ephemeral API starts before the command's imports, unless a Prefect
setting may name a server, and the command ends without the interpreter's teardown."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from core.startup import _prefect_settings_given
from core.storage import REPO_ROOT


@pytest.fixture
def no_settings(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("PREFECT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_without_any_prefect_setting_the_server_may_start_before_prefect_is_imported(no_settings):
    assert not _prefect_settings_given()


@pytest.mark.parametrize(
    "variable", ["PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_PROFILES_PATH"]
)
def test_a_setting_in_the_environment_that_may_name_a_server_waits_for_prefects_own_reading(
    no_settings, monkeypatch, variable
):
    monkeypatch.setenv(variable, "x")
    assert _prefect_settings_given()


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("home/profiles.toml", 'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = "http://server:4200/api"\n'),
        ("prefect.toml", '[api]\nurl = "http://server:4200/api"\n'),
        (".env", "PREFECT_API_URL=http://server:4200/api\n"),
        ("pyproject.toml", '[tool.prefect.api]\nurl = "http://server:4200/api"\n'),
    ],
)
def test_a_settings_file_that_may_name_a_server_waits_for_prefects_own_reading(no_settings, file, text):
    (no_settings / file).parent.mkdir(parents=True, exist_ok=True)
    (no_settings / file).write_text(text)
    assert _prefect_settings_given()


@pytest.mark.slow
def test_a_command_runs_a_flow_on_the_api_it_started_and_leaves_no_server_behind(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    environment["PREFECT_HOME"] = str(tmp_path / "home")
    script = textwrap.dedent(
        """
        from core.startup import begin_command, end_command, start_prefect_api_while_importing
        begin_command()
        import os
        from prefect import flow
        start_prefect_api_while_importing()
        @flow
        def hello():
            return os.environ["PREFECT_API_URL"]
        print(hello(), os.environ["PREFECT_UI_URL"] == "", flush=True)
        end_command(7)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 7, done.stderr[-2000:]
    api_url, no_ui = done.stdout.split()
    assert api_url.startswith("http://127.0.0.1:") and no_ui == "True"
    port = int(api_url.split(":")[2].split("/")[0])
    with pytest.raises(ConnectionRefusedError):  # the server has stopped
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_tensorflows_import_noise_is_dropped_from_native_stderr_and_everything_else_kept(capfd):
    from core.startup import TENSORFLOW_IMPORT_NOISE, native_stderr_without

    with native_stderr_without(TENSORFLOW_IMPORT_NOISE):
        os.write(2, b"E cuda_dnn.cc:9261] Unable to register cuDNN factory: Attempting to register factory\n")
        os.write(2, b"a real problem, written by native code\n")
        os.write(2, b"E cuda_blas.cc:1515] Unable to register cuBLAS factory: Attempting to register factory\n")
    err = capfd.readouterr().err
    assert err == "a real problem, written by native code\n"


@pytest.mark.slow
def test_a_conversion_workers_native_output_goes_to_its_log_not_to_the_command(tmp_path):
    script = textwrap.dedent(
        """
        import subprocess
        from tasks.convert_to_tflite import CONVERSION_WORKERS
        # A program the worker starts writes to the worker's own standard error, as the converter's code does.
        CONVERSION_WORKERS.run(subprocess.run, args=["sh", "-c", "echo said in the worker >&2"], check=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "QUANTIZE_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "said in the worker" not in done.stderr + done.stdout
    logs = list((tmp_path / "cache" / "work" / "logs").glob("conversion-worker-*.log"))
    assert any("said in the worker" in log.read_text() for log in logs), logs
