"""Start or stop a local Prefect stack for operating the workflow from the UI: a Prefect server on
127.0.0.1 (not reachable from other machines), the `local-process` work pool, the deployments of
`prefect.yaml` and one process worker. The processes run in the background; their logs and process
ids live in the state folder.

    python -m deployments.local_stack start     # or: make server
    python -m deployments.local_stack status
    python -m deployments.local_stack stop      # or: make stop
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from core.files import atomic_write_json
from core.storage import REPO_ROOT, cache_root

WORK_POOL = "local-process"
DEFAULT_PORT = 4200


def stack_dir(state_dir: Path | None = None) -> Path:
    return Path(state_dir or cache_root() / "prefect-stack")


def state_file(state_dir: Path) -> Path:
    return state_dir / "stack.json"


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, sig: int) -> bool:
    """Signal the process group `pid` leads; False when it is gone or not ours (a recycled pid)."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _background(command: list[str], log: Path, env: dict[str, str]) -> int:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return process.pid


def wait_for_api(api_url: str, timeout: float, server_pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(server_pid):
            raise RuntimeError(f"the Prefect server exited during start-up; see {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not answer at {api_url} within {timeout:.0f} s; see {log}")


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")


def start(
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    state_dir: Path | None = None,
    deploy: bool = True,
    worker: bool = True,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
) -> dict:
    """`env` adds to this process's environment for the server, the commands and the worker (and so the flow runs)."""
    state_dir = stack_dir(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if state_file(state_dir).exists():
        running = json.loads(state_file(state_dir).read_text())
        if any(_alive(pid) for pid in running["pids"].values()):
            raise RuntimeError(
                f"a stack is already running (API {running['api_url']}); "
                "stop it first: python -m deployments.local_stack stop"
            )
    api_url = f"http://{host}:{port}/api"
    # PWD: prefect.yaml's pull step records it as the folder the worker runs flows from.
    env = {
        **os.environ,
        **(env or {}),
        "PREFECT_API_URL": api_url,
        "PWD": str(REPO_ROOT),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    # Prefect 3.8's UI calls port 4200 unless told where the API is: on any other port it could not connect.
    server_env["PREFECT_UI_API_URL"] = api_url
    pids = {
        "server": _background(
            _prefect("server", "start", "--host", host, "--port", str(port)), state_dir / "server.log", server_env
        )
    }
    stack = {"api_url": api_url, "ui_url": f"http://{host}:{port}", "pids": pids, "logs": str(state_dir)}
    atomic_write_json(state_file(state_dir), stack)
    try:
        wait_for_api(api_url, timeout, pids["server"], state_dir / "server.log")
        _run(
            _prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"),
            env,
            f"creating work pool {WORK_POOL}",
        )
        if deploy:
            _run(_prefect("--no-prompt", "deploy", "--all"), env, "prefect deploy --all (prefect.yaml)")
        if worker:
            pids["worker"] = _background(
                _prefect("worker", "start", "--pool", WORK_POOL, "--name", "local-worker"),
                state_dir / "worker.log",
                env,
            )
    except BaseException:
        stop(state_dir)
        raise
    atomic_write_json(state_file(state_dir), stack)
    return stack


def stop(state_dir: Path | None = None, grace: float = 15.0) -> list[str]:
    """Stops the worker, then the server; returns what was stopped."""
    state_dir = stack_dir(state_dir)
    if not state_file(state_dir).exists():
        return []
    stack = json.loads(state_file(state_dir).read_text())
    stopped = []
    for name in ("worker", "server"):
        pid = stack["pids"].get(name)
        if pid is None or not _alive(pid):
            continue
        if not _signal_group(pid, signal.SIGTERM):
            continue
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            try:  # reap our own child; a process started by an earlier command is reaped by init
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
        stopped.append(f"{name} (pid {pid})")
    state_file(state_dir).unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.local_stack",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the API and UI (default 4200)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--state-dir", type=Path, help="where the logs and process ids go (default .cache/prefect-stack)"
    )
    parser.add_argument("--no-worker", action="store_true", help="start the server, pool and deployments only")
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            stack = start(args.port, args.host, args.state_dir, worker=not args.no_worker)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"Prefect UI:  {stack['ui_url']}\n"
            f"API:         export PREFECT_API_URL={stack['api_url']}\n"
            f"logs:        {stack['logs']}"
        )
    elif args.action == "stop":
        stopped = stop(args.state_dir)
        print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    else:
        path = state_file(stack_dir(args.state_dir))
        if not path.exists():
            print("not running")
            return 1
        stack = json.loads(path.read_text())
        for name, pid in stack["pids"].items():
            print(f"{name}: pid {pid}, {'running' if _alive(pid) else 'not running'}")
        print(f"Prefect UI: {stack['ui_url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
