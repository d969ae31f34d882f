"""A run's outputs are published as one unit: the output and result folders hold the whole previous set or the
whole new set, byte for byte, never a mix, whatever stops the publish: a disk that fills while the new files are
staged, a swap the file system refuses, SIGKILL at any point (then a recovery, on its own or at the start of the
next publish, finishes or undoes it). Stale outputs go only once the new set is in place.

Real files, real processes (killed with SIGKILL through QUANTIZE_PUBLISH_KILL_AFTER), a real full file system (a
private tmpfs), a real immutable file.
"""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.results.publishing import KILL_AFTER_ENV, Put, publish_files, recover_interrupted_publish
from core.storage import REPO_ROOT
from tests.test_locking import in_private_mount_namespace, skip_unless_private_mounts_work

# What an earlier run left: its models, its IMX500 folder, its results, and a file of the user's.
PREVIOUS = {
    "out/model.tflite": b"previous float model",
    "out/model_float16.tflite": b"previous float16 model",  # the new run does not make it: stale
    "out/imx500/packerOut.zip": b"previous packer output",
    "out/imx500/dnnParams.xml": b"<previous/>",
    "out/notes.txt": b"the user's own notes",  # not ours: never touched
    "res/results.json": b'{"run": "previous"}\n',
    "res/results.csv": b"model\nprevious\n",
    "res/report.html": b"<p>previous</p>",
}
# What the new run publishes: a replaced model, a new one, a replaced folder with other files, the results.
NEW = {
    "out/model.tflite": b"new float model",
    "out/model_full_int8.tflite": b"new int8 model",
    "out/imx500/packerOut.zip": b"new packer output",
    "out/imx500/model_quantized_MemoryReport.json": b"{}",
    "res/results.json": b'{"run": "new"}\n',
    "res/results.csv": b"model\nnew\n",
    "res/report.html": b"<p>new</p>",
}
STALE = "out/model_float16.tflite"
USERS = "out/notes.txt"

PUBLISH = """
    import json, os, sys
    from pathlib import Path
    from core.results.publishing import Put, operations, publish_files

    spec = json.loads(sys.argv[1])
    if len(sys.argv) > 2:
        os.umask(int(sys.argv[2], 8))
    puts = [
        Put(Path(p["destination"]), source=Path(p["source"]))
        if "source" in p
        else Put(Path(p["destination"]), content=p["content"].encode("latin-1"))
        for p in spec["puts"]
    ]
    publish_files(puts, [Path(r) for r in spec["removals"]], Path(spec["primary"]))
    print(json.dumps(operations()))
"""

RECOVER = """
    import json, sys
    from core.results.publishing import operations, recover_interrupted_publish

    print(json.dumps({"done": recover_interrupted_publish(sys.argv[1:]), "operations": operations()}))
"""


def python(code: str, *args: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    """A Python process of this project running `code`, killed by SIGKILL after `kill_after` file operations."""
    environment = {k: v for k, v in os.environ.items() if k != KILL_AFTER_ENV} | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    if kill_after is not None:
        environment[KILL_AFTER_ENV] = str(kill_after)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def previous_run(case: Path) -> Path:
    """`case/out` and `case/res` as an earlier run left them; one file with a mode of its own."""
    write_files(case, PREVIOUS)
    os.chmod(case / "res/results.json", 0o640)
    return case


def make_sources(folder: Path, files: dict[str, bytes]) -> Path:
    """The new models and IMX500 folder where the steps left them (the cache's work folders)."""
    for name, content in files.items():
        if name.startswith("out/imx500/"):
            write_files(folder, {f"imx500/{Path(name).name}": content})
        elif name.startswith("out/"):
            write_files(folder, {Path(name).name: content})
    return folder


def publication(out: Path, res: Path, sources: Path, files: dict[str, bytes]) -> dict:
    """The new set as `publish` builds it (models copied from files, imx500/ from a folder, the results written
    from memory, the stale model removed), as JSON for a child process."""
    puts: list[dict] = []
    for name, content in files.items():
        if name.startswith("out/imx500/"):
            continue
        if name.startswith("out/"):
            puts.append({"destination": str(out / Path(name).name), "source": str(sources / Path(name).name)})
        else:
            puts.append({"destination": str(res / Path(name).name), "content": content.decode("latin-1")})
    puts.insert(2, {"destination": str(out / "imx500"), "source": str(sources / "imx500")})
    return {"puts": puts, "removals": [str(out / Path(STALE).name)], "primary": str(res)}


def publish_here(spec: dict) -> None:
    """The same publish, in this process."""
    puts = [
        Put(Path(p["destination"]), source=Path(p["source"]))
        if "source" in p
        else Put(Path(p["destination"]), content=p["content"].encode("latin-1"))
        for p in spec["puts"]
    ]
    publish_files(puts, [Path(r) for r in spec["removals"]], Path(spec["primary"]))


def snapshot(*folders: Path) -> dict[str, tuple[str, bytes | None]]:
    """Every file and folder below `folders`, hidden ones included: its mode and its bytes."""
    return {
        f"{folder.name}/{path.relative_to(folder).as_posix()}": (
            oct(stat.S_IMODE(path.lstat().st_mode)),
            None if path.is_dir() else path.read_bytes(),
        )
        for folder in folders
        for path in sorted(folder.rglob("*"))
    }


def files_of(found: dict[str, tuple[str, bytes | None]]) -> dict[str, bytes]:
    return {name: content for name, (_, content) in found.items() if content is not None}


def the_new_set(files: dict[str, bytes] = NEW) -> dict[str, bytes]:
    """What the folders hold once the new set is in place: the new files, results.csv of the new set, the user's
    file; no stale model, no staged or previous file, no journal, no lock."""
    return {**files, USERS: PREVIOUS[USERS]}


@pytest.mark.parametrize("mask, file_mode, folder_mode", [("022", "0o644", "0o755"), ("027", "0o640", "0o750")])
def test_a_publish_puts_the_whole_new_set_in_place_with_the_usual_permissions(tmp_path, mask, file_mode, folder_mode):
    sources = make_sources(tmp_path / "sources", NEW)
    case = previous_run(tmp_path / "case")

    run = python(PUBLISH, json.dumps(publication(case / "out", case / "res", sources, NEW)), mask)

    assert run.returncode == 0, run.stderr[-2000:]
    found = snapshot(case / "out", case / "res")
    assert files_of(found) == the_new_set()
    modes = {name: mode for name, (mode, _) in found.items()}
    assert {name: modes[name] for name in NEW} == dict.fromkeys(NEW, file_mode)  # 0666 less the umask, not 0600
    assert modes["out/imx500"] == folder_mode  # 0777 less the umask: not the source folder's mode, nor 0700


ROW = {
    "model": "tflite",
    "description": "float32 throughout",
    "file": "model.tflite",
    "file_size_bytes": 15,
    "top_1_accuracy": 0.975,
    "top_5_accuracy": 1.0,
    "top_1_change_vs_keras": 0.0,
    "agreement_with_keras": 1.0,
    "latency_ms": {"1_thread": 0.07, "all_threads": 0.05},
    "input_dtype": "float32",
    "output_dtype": "float32",
    "image_count": 120,
}


def test_record_results_publishes_the_same_files_as_before_and_lists_the_stale_outputs_it_removed(tmp_path):
    from core.results.build_results import PublicationPlan
    from core.results.record_results import publish
    from core.results.results_text import results_table

    sources = make_sources(tmp_path / "sources", NEW)
    case = previous_run(tmp_path / "case")
    out, res = case / "out", case / "res"
    models = [(sources / name, out / name) for name in ("model.tflite", "model_full_int8.tflite")]
    results = {"top_1_accuracy_keras": 0.975, "models": [ROW]}

    publish(
        results, PublicationPlan(out, res, files=models, imx500_folder=(sources / "imx500", out / "imx500")), "<p/>"
    )

    assert results["removed_stale_outputs"] == ["model_float16.tflite"]
    assert (res / "results.json").read_text() == json.dumps(results, indent=2) + "\n"
    assert (res / "results.csv").read_text() == results_table(results).to_csv(index=False)
    published = {name: NEW[name] for name in NEW if name.startswith("out/")}
    assert files_of(snapshot(out)) == published | {USERS: PREVIOUS[USERS]}
    assert files_of(snapshot(res)) == {
        "res/results.json": (res / "results.json").read_bytes(),
        "res/results.csv": (res / "results.csv").read_bytes(),
        "res/report.html": b"<p/>",
    }

    results = {"top_1_accuracy_keras": 0.975, "models": [ROW]}
    publish(results, PublicationPlan(out, res, files=models[:1]), "<p/>")  # no int8 model, no IMX500 converter

    assert results["removed_stale_outputs"] == ["model_full_int8.tflite", "imx500/"]
    assert sorted(p.name for p in out.iterdir()) == ["model.tflite", "notes.txt"]


def test_a_failure_while_staging_leaves_the_previous_set_and_its_stale_outputs_and_no_staged_file(tmp_path):
    """The int8 model's source has gone (a cache cleared meanwhile) once model.tflite was staged."""
    sources = make_sources(tmp_path / "sources", NEW)
    case = previous_run(tmp_path / "case")
    before = snapshot(case / "out", case / "res")
    spec = publication(case / "out", case / "res", sources, NEW)
    spec["puts"][1]["source"] = str(tmp_path / "sources" / "gone")

    with pytest.raises(FileNotFoundError) as info:
        publish_here(spec)

    assert snapshot(case / "out", case / "res") == before  # the stale model too: removed only with a new set
    message = str(info.value)
    assert f"cannot publish to {case / 'out'} and {case / 'res'}" in message
    assert "the previous outputs are left as they were" in message


def test_a_swap_the_file_system_refuses_is_undone_and_leaves_the_previous_set(tmp_path):
    """report.html is immutable (chattr +i): it cannot get a second name (a hard link), nor be renamed, so the swap
    fails after the models, the IMX500 folder, results.json and results.csv were swapped in; every one of them gets
    its previous file back."""
    sources = make_sources(tmp_path / "sources", NEW)
    case = previous_run(tmp_path / "case")
    report = case / "res" / "report.html"
    if subprocess.run(["chattr", "+i", str(report)], capture_output=True).returncode != 0:
        pytest.skip("needs chattr +i (root, and a file system with the immutable flag)")
    try:
        before = snapshot(case / "out", case / "res")
        with pytest.raises(PermissionError) as info:
            publish_here(publication(case / "out", case / "res", sources, NEW))
        assert snapshot(case / "out", case / "res") == before
        assert "report.html" in str(info.value) and "the previous outputs are left as they were" in str(info.value)
    finally:
        subprocess.run(["chattr", "-i", str(report)], check=True)
    publish_here(publication(case / "out", case / "res", sources, NEW))  # once the cause is gone
    assert files_of(snapshot(case / "out", case / "res")) == the_new_set()


def publish_completely(tmp_path: Path, sources: Path) -> tuple[list[str], dict, dict]:
    """A publish left to finish, in a child process: its operations, and the folders before and after."""
    case = previous_run(tmp_path / "complete")
    before = snapshot(case / "out", case / "res")
    run = python(PUBLISH, json.dumps(publication(case / "out", case / "res", sources, NEW)))
    assert run.returncode == 0, run.stderr[-2000:]
    after = snapshot(case / "out", case / "res")
    assert files_of(after) == the_new_set()
    return json.loads(run.stdout), before, after


def test_a_publish_killed_at_any_point_is_recovered_to_the_whole_previous_or_the_whole_new_set(tmp_path):
    """SIGKILL after each number of file operations, 0 to all of them; then a recovery, from both folders or
    from the output folder alone. Killed before the commit: the previous set; after: the new set."""
    sources = make_sources(tmp_path / "sources", NEW)
    operations, before, after = publish_completely(tmp_path, sources)
    commit = operations.index("commit")
    assert operations.index(f"set aside {tmp_path / 'complete' / STALE}") > commit  # stale goes after the commit

    for n in range(len(operations) + 1):
        case = previous_run(tmp_path / f"killed-after-{n}")
        out, res = case / "out", case / "res"
        killed = python(PUBLISH, json.dumps(publication(out, res, sources, NEW)), kill_after=n)
        assert killed.returncode == (-signal.SIGKILL if n < len(operations) else 0), killed.stderr[-2000:]

        done = recover_interrupted_publish([out] if n % 2 else [out, res])

        expected = before if n <= commit else after
        step = operations[n - 1] if n else "nothing"
        assert snapshot(out, res) == expected, f"killed after {n} operations ({step}); recovery: {done}"
        assert bool(done) == (0 < n < len(operations)), (n, done)


@pytest.mark.parametrize("stage", ["before the commit", "during the swap", "during the clean-up"])
def test_a_recovery_killed_at_any_point_is_itself_recovered(tmp_path, stage):
    sources = make_sources(tmp_path / "sources", NEW)
    operations, before, after = publish_completely(tmp_path, sources)
    commit, cleanup = operations.index("commit"), next(i for i, o in enumerate(operations) if ".swapping" in o)
    n = {"before the commit": commit - 1, "during the swap": commit + 4, "during the clean-up": cleanup + 2}[stage]
    expected = before if n <= commit else after

    recovery_operations = None
    m = 0
    while recovery_operations is None or m <= len(recovery_operations):
        case = previous_run(tmp_path / f"recovery-killed-after-{m}")
        out, res = case / "out", case / "res"
        python(PUBLISH, json.dumps(publication(out, res, sources, NEW)), kill_after=n)
        recovery = python(RECOVER, str(out), str(res), kill_after=m)
        if recovery.returncode == 0:
            recovery_operations = json.loads(recovery.stdout)["operations"]
        else:
            assert recovery.returncode == -signal.SIGKILL, recovery.stderr[-2000:]

        recover_interrupted_publish([out, res])

        assert snapshot(out, res) == expected, f"recovery killed after {m} operations"
        m += 1
    assert recovery_operations, "the kill left something to recover"


@pytest.mark.parametrize("stage", ["before the commit", "during the swap", "during the clean-up"])
@pytest.mark.parametrize("layout", ["two folders", "one folder"])
def test_the_next_publish_recovers_a_killed_one_and_puts_its_own_set_whole(tmp_path, stage, layout):
    sources = make_sources(tmp_path / "sources", NEW)
    operations, _, _ = publish_completely(tmp_path, sources)
    commit, cleanup = operations.index("commit"), next(i for i, o in enumerate(operations) if ".swapping" in o)
    n = {"before the commit": commit - 2, "during the swap": commit + 3, "during the clean-up": cleanup + 3}[stage]
    case = previous_run(tmp_path / "case")
    out, res = case / "out", case / ("out" if layout == "one folder" else "res")
    killed = python(PUBLISH, json.dumps(publication(out, res, sources, NEW)), kill_after=n)
    assert killed.returncode == -signal.SIGKILL

    third = {name: b"third " + content for name, content in NEW.items()}
    publish_here(publication(out, res, make_sources(tmp_path / "third", third), third))

    if layout == "one folder":  # the results beside the models
        assert files_of(snapshot(out)) == {name.replace("res/", "out/"): c for name, c in the_new_set(third).items()}
    else:
        assert files_of(snapshot(out, res)) == the_new_set(third)


FULL_DISK = """
    import errno, json, os, sys
    from pathlib import Path
    from tests.test_publishing import NEW, PREVIOUS, make_sources, publication, publish_here, snapshot, write_files

    disk, case, on_disk = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    out = disk / "out" if on_disk == "out" else case / "out"
    res = disk / "res" if on_disk == "res" else case / "res"
    for folder in (out, res):
        write_files(folder, {name.split("/", 1)[1]: c for name, c in PREVIOUS.items() if name.startswith(folder.name)})
    big = json.loads(sys.argv[4])
    files = {name: bytes([65 + i]) * 48 * 1024 if name in big else c for i, (name, c) in enumerate(NEW.items())}
    spec = publication(out, res, make_sources(case / "sources", files), files)
    before = snapshot(out, res)

    with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk, then leave room for one new file
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        f.truncate(f.tell() - 64 * 1024)
    try:
        publish_here(spec)
        error = None
    except OSError as exc:
        error = {"errno": exc.errno, "message": str(exc)}
    unchanged = snapshot(out, res) == before
    (disk / "filler").unlink()  # space freed: the next run publishes
    publish_here(spec)
    after = snapshot(out, res)
    published = {name: len(content) for name, (_, content) in after.items() if content is not None}
    print(json.dumps({"error": error, "unchanged": unchanged, "published": published}))
"""


@pytest.mark.parametrize("on_disk", ["res", "out"])
def test_a_disk_that_fills_while_staging_leaves_the_previous_set_byte_for_byte(tmp_path, on_disk):
    """The result folder (or the output folder) on a 256 KiB tmpfs with room for one new file of 48 KiB: staging
    the next one fails midway with ENOSPC. Everything staged is removed, the previous set stays, stale model and
    all; once space is freed the same publish succeeds."""
    disk = tmp_path / "disk"
    disk.mkdir()
    skip_unless_private_mounts_work(disk, "size=256k")
    script = tmp_path / "full_disk.py"
    script.write_text(textwrap.dedent(FULL_DISK))
    big_files = [name for name in NEW if name.startswith(f"{on_disk}/") or name.startswith("res/")]
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    result = in_private_mount_namespace(
        f"mount -t tmpfs -o size=256k tmpfs {disk} && exec {sys.executable} {script} "
        f"{disk} {tmp_path / 'case'} {on_disk} '{json.dumps(big_files)}'",
        cwd=REPO_ROOT,
        env={k: v for k, v in environment.items() if k != KILL_AFTER_ENV},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["error"] is not None, "the disk did not fill"
    assert report["error"]["errno"] == errno.ENOSPC
    assert "the previous outputs are left as they were" in report["error"]["message"]
    assert "Free space on that disk" in report["error"]["message"]
    staged_midway = ".results.csv." if on_disk == "res" else ".model_full_int8.tflite."  # the second big file
    assert f"No space left on device, at: stage {disk}/{on_disk}/{staged_midway}" in report["error"]["message"]
    assert report["unchanged"], "the failed publish changed the previous set"
    assert sorted(report["published"]) == sorted(the_new_set())  # the stale model removed by the one that succeeded
    assert all(size == 48 * 1024 for name, size in report["published"].items() if name in big_files)
