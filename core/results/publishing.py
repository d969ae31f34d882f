"""Publishing a run's files as one set: the folders hold either the whole previous set or the whole new one,
never a mix, whatever stops the run (an error such as a full disk, SIGKILL, a power cut).

A publish, under the locks of every folder it writes (core.locking), with a token of its own:

1. begin: `.quantize-evaluate.journal.json` in each folder lists every destination of the set (a file or
   folder put there, or a stale output removed), then the empty mark `.quantize-evaluate.<token>.swapping`
   is created in the primary folder (the result folder): while it exists the publish can still be undone.
2. stage: each new file is written beside its destination as `.<name>.<token>.staged` (a folder is copied
   whole), with the permissions of any new file (0666 less the umask, folders 0777 less it), and synced to
   disk; each file it will replace gets a second name, `.<name>.<token>.previous` (a hard link: no copy).
3. commit: the empty mark `.quantize-evaluate.<token>.committed` in the primary folder, once every new file
   is staged. Before it, an interrupted publish is rolled back; after it, rolled forward.
4. swap: each staged file is renamed onto its destination (a replaced folder, a stale output, and a file
   where hard links are not supported are first renamed to their previous name). The swapping mark is then
   removed: the new set is in place, stale outputs included.
5. clean up: the previous names (the replaced files, the stale outputs), the commit mark, the journals.

A failure (an OSError such as ENOSPC, an interrupt) before the swapping mark is removed undoes the publish:
every destination gets its previous file back, the staged files and the journals are removed, and the error
is raised: the previous set is left byte for byte. `recover`, run at the start of every publish and callable
on its own (`recover_interrupted_publish`), reads the journal a killed publish left behind:

- swapping and committed marks: every new file was staged, so the swap is finished (roll forward); should
  that fail, it is undone instead;
- swapping mark, no committed mark: staging was interrupted; the staged files are removed and every
  destination keeps (or gets back) its previous file (roll back);
- no swapping mark: the swap had not begun (nothing was staged), or was over, or undone; only the clean-up
  is finished (nothing is renamed).

Every step that changes a file is one operation; with QUANTIZE_PUBLISH_KILL_AFTER=N the process kills itself
with SIGKILL before its operation N + 1 (counted from 0 at the start of each publish), to rehearse a kill at
every point of a publish.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from core.files import umask
from core.locking import locked_folders

JOURNAL_NAME = ".quantize-evaluate.journal.json"
KILL_AFTER_ENV = "QUANTIZE_PUBLISH_KILL_AFTER"
_JOURNAL_TMP = JOURNAL_NAME + ".tmp"
_MARK = re.compile(r"\.quantize-evaluate\.([0-9a-f]{12})\.(?:committed|swapping)")
_TOKEN = re.compile(r"[0-9a-f]{12}")
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


class PublishJournalError(RuntimeError):
    """A journal that this tool did not write, or that was changed: recovery will not act on it."""


@dataclass(frozen=True)
class Put:
    """A file of the new set: `source` (a file, or a folder published whole) or `content`, put at `destination`."""

    destination: Path
    source: Path | None = None
    content: bytes | None = None

    def __post_init__(self) -> None:
        if (self.source is None) == (self.content is None):
            raise ValueError(f"{self.destination}: give a source or a content, not both or neither")


@dataclass(frozen=True)
class Entry:
    """One destination of a publish: a file or folder put there, or a stale output removed."""

    action: Literal["put", "remove"]
    path: Path
    folder: bool  # a folder (imx500/) rather than a file
    replaces: bool  # something is at `path` now (always true for a removal)
    token: str

    @property
    def staged(self) -> Path:
        return self.path.with_name(f".{self.path.name}.{self.token}.staged")

    @property
    def previous(self) -> Path:
        return self.path.with_name(f".{self.path.name}.{self.token}.previous")

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "path": str(self.path), "folder": self.folder, "replaces": self.replaces}


@dataclass(frozen=True)
class Journal:
    """What one publish puts where: written to every folder it touches before anything else."""

    token: str
    primary: Path  # holds the swapping and committed marks
    folders: tuple[Path, ...]
    entries: tuple[Entry, ...]

    @property
    def swapping_mark(self) -> Path:
        return self.primary / f".quantize-evaluate.{self.token}.swapping"

    @property
    def committed_mark(self) -> Path:
        return self.primary / f".quantize-evaluate.{self.token}.committed"

    def in_writing_order(self) -> list[Path]:
        """The folders, the primary last. Journals are removed in the reverse order and the marks before them, so
        while anything of the publish is left, the first folder's journal names it: a recovery of that folder
        alone (the output folder) finds it all."""
        return [f for f in self.folders if f != self.primary] + [self.primary]

    def dump(self) -> bytes:
        content = {
            "format": 1,
            "token": self.token,
            "primary": str(self.primary),
            "folders": [str(f) for f in self.folders],
            "entries": [e.as_json() for e in self.entries],
        }
        return (json.dumps(content, indent=2) + "\n").encode()

    @classmethod
    def load(cls, path: Path) -> Journal:
        try:
            content = json.loads(path.read_bytes())
            token, primary = content["token"], Path(content["primary"])
            folders = tuple(Path(f) for f in content["folders"])
            entries = tuple(
                Entry(action=e["action"], path=Path(e["path"]), folder=e["folder"], replaces=e["replaces"], token=token)
                for e in content["entries"]
            )
            journal = cls(token=token, primary=primary, folders=folders, entries=entries)
            problem = journal._problem(path.parent)
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            raise PublishJournalError(
                f"the publish journal {path} cannot be used ({problem}): this tool did not write it, or it was "
                "changed. Move it out of the folder, then check the files named .<name>.<token>.staged and "
                ".<name>.<token>.previous beside it (the interrupted publish's new and previous files)"
            )
        return journal

    def _problem(self, folder: Path) -> str | None:
        if not _TOKEN.fullmatch(self.token):
            return f"token {self.token!r}"
        if not any(_same_folder(folder, f) for f in self.folders) or self.primary not in self.folders:
            return "its folders do not include its own"
        if not all(f.is_absolute() for f in self.folders):
            return "a folder is not an absolute path"
        for e in self.entries:
            if e.action not in ("put", "remove") or not isinstance(e.folder, bool) or not isinstance(e.replaces, bool):
                return f"entry {e.as_json()}"
            if e.path.parent not in self.folders or e.path.name in ("", ".", ".."):
                return f"{e.path} is not in its folders"
        return None


# --- the publish -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def publishing(folders: Iterable[Path], timeout: float = 120.0) -> Iterator[list[str]]:
    """Hold the locks of `folders`, and of every folder that an interrupted publish there also wrote, and
    recover that publish first; yields what the recovery did (one line per publish, usually none)."""
    wanted = {Path(f).absolute() for f in folders}
    _operations.clear()
    locking = _with_journal_folders(wanted)
    while True:
        with locked_folders(sorted(locking), timeout=timeout):
            needed = _with_journal_folders(wanted)  # again, now that nobody else can write a journal here
            if needed <= locking:
                yield recover(locking)
                return
        locking |= needed


def publish_files(puts: Sequence[Put], removals: Sequence[Path], primary: Path, timeout: float = 120.0) -> None:
    """Publish `puts` and remove the stale outputs `removals` as one set, under the folders' locks."""
    folders = {p.destination.parent for p in puts} | {r.parent for r in removals} | {primary}
    with publishing(folders, timeout):
        swap_in(puts, removals, primary)


def swap_in(puts: Sequence[Put], removals: Sequence[Path], primary: Path) -> None:
    """Publish `puts` and remove `removals` as one set (see the module's docstring). The caller holds the locks
    of every folder involved and has recovered them (`publishing`). On a failure the previous set is left as it
    was and the error raised."""
    journal = _plan(puts, removals, Path(primary).absolute())
    committed = False
    try:
        _begin(journal)
        for put, entry in zip(puts, journal.entries, strict=False):
            _stage(put, entry)
        for folder in journal.folders:
            _sync_folder(folder)
        _operation("commit")
        _create_mark(journal.committed_mark)
        committed = True
        _sync_folder(journal.primary)
        _swap(journal)
    except BaseException as exc:
        _give_up(journal, committed, exc, failed_at=_operations[-1] if _operations else "the start")
        raise
    try:
        _end_swapping(journal)
        _clean_up(journal)
    except OSError as exc:  # the new set is in place: the next publish here finishes the clean-up
        log.warning("published to %s, but the clean-up failed (%s); the next publish finishes it", journal.folders, exc)


def _plan(puts: Sequence[Put], removals: Sequence[Path], primary: Path) -> Journal:
    token = uuid.uuid4().hex[:12]
    entries: list[Entry] = []
    for put in puts:
        path = Path(put.destination).absolute()
        folder = put.source is not None and Path(put.source).is_dir()
        replaces = os.path.lexists(path)
        if replaces and _is_folder(path) != folder:
            kind = "a folder" if folder else "a file"
            raise OSError(errno.EISDIR if _is_folder(path) else errno.ENOTDIR, f"cannot put {kind} there", str(path))
        entries.append(Entry(action="put", path=path, folder=folder, replaces=replaces, token=token))
    for removal in removals:
        path = Path(removal).absolute()
        if os.path.lexists(path):
            entries.append(Entry(action="remove", path=path, folder=_is_folder(path), replaces=True, token=token))
    paths = [e.path for e in entries]
    if len(set(paths)) != len(paths):
        raise ValueError(f"a destination is named twice: {sorted(str(p) for p in paths)}")
    folders = tuple(sorted({e.path.parent for e in entries} | {primary}))
    return Journal(token=token, primary=primary, folders=folders, entries=tuple(entries))


def _begin(journal: Journal) -> None:
    for folder in journal.in_writing_order():
        _operation(f"write journal {folder / JOURNAL_NAME}")
        tmp = folder / _JOURNAL_TMP
        tmp.unlink(missing_ok=True)  # left by a publish killed while writing it (a recovery removes it too)
        try:
            _write_new_file(tmp, lambda f: f.write(journal.dump()))
            os.replace(tmp, folder / JOURNAL_NAME)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _operation(f"create {journal.swapping_mark}")
    _create_mark(journal.swapping_mark)
    for folder in journal.folders:
        _sync_folder(folder)


def _stage(put: Put, entry: Entry) -> None:
    _operation(f"stage {entry.staged}")
    if put.content is not None:
        content = put.content
        _write_new_file(entry.staged, lambda f: f.write(content))
    elif entry.folder:
        assert put.source is not None
        shutil.copytree(put.source, entry.staged, copy_function=_copy_file)
        for folder, _, _ in os.walk(entry.staged):  # copytree copies the source folders' modes
            os.chmod(folder, 0o777 & ~umask())
    else:
        assert put.source is not None
        _copy_file(put.source, entry.staged)
    if entry.replaces and not entry.folder:
        _operation(f"link {entry.previous}")
        try:
            os.link(entry.path, entry.previous, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise  # else: no hard links on this file system; the swap renames the file aside instead


def _swap(journal: Journal) -> None:
    """Every destination gets its new file, every stale output its previous name (roll forward)."""
    for entry in journal.entries:
        if entry.action == "remove":
            if os.path.lexists(entry.path):
                _operation(f"set aside {entry.path}")
                os.rename(entry.path, entry.previous)
            continue
        if not os.path.lexists(entry.staged):
            if not os.path.lexists(entry.path):
                raise FileNotFoundError(
                    errno.ENOENT, "neither the staged file nor its destination exists", str(entry.staged)
                )
            continue  # swapped already
        if entry.replaces and os.path.lexists(entry.path) and not os.path.lexists(entry.previous):
            _operation(f"set aside {entry.path}")
            os.rename(entry.path, entry.previous)
        _operation(f"swap {entry.path}")
        os.replace(entry.staged, entry.path)
    for folder in journal.folders:
        _sync_folder(folder)


def _undo(journal: Journal, committed: bool) -> None:
    """Every destination gets its previous file back (roll back); the staged files stay for the clean-up.
    Only once committed can a new file be in place: before, a destination is the previous file."""
    for entry in reversed(journal.entries):
        if entry.action == "put" and committed and not os.path.lexists(entry.staged) and os.path.lexists(entry.path):
            _operation(f"take back {entry.path}")
            os.rename(entry.path, entry.staged)
        if entry.replaces and not os.path.lexists(entry.path) and os.path.lexists(entry.previous):
            _operation(f"restore {entry.path}")
            os.rename(entry.previous, entry.path)
    for folder in journal.folders:
        _sync_folder(folder)


def _end_swapping(journal: Journal) -> None:
    """From here on nothing is renamed: what is at the destinations stays (the new set, or the previous one
    after an undo), and the clean-up removes the staged and previous names."""
    if os.path.lexists(journal.swapping_mark):
        _operation(f"remove {journal.swapping_mark}")
        journal.swapping_mark.unlink()
        _sync_folder(journal.primary)


def _clean_up(journal: Journal) -> None:
    for entry in journal.entries:
        for leftover in (entry.staged, entry.previous):
            if os.path.lexists(leftover):
                _operation(f"remove {leftover}")
                _remove(leftover)
    for mark in [journal.committed_mark, journal.swapping_mark] + [f / _JOURNAL_TMP for f in journal.folders]:
        if os.path.lexists(mark):
            _operation(f"remove {mark}")
            mark.unlink()
    for folder in reversed(journal.in_writing_order()):
        if os.path.lexists(folder / JOURNAL_NAME) and _token_of(folder / JOURNAL_NAME) == journal.token:
            _operation(f"remove {folder / JOURNAL_NAME}")
            (folder / JOURNAL_NAME).unlink()
    for folder in journal.folders:
        _sync_folder(folder)


def _give_up(journal: Journal, committed: bool, exc: BaseException, failed_at: str) -> None:
    """Undo a publish that failed in this process, then let `exc` go on (reworded for an OSError)."""
    where = " and ".join(str(f) for f in journal.folders)
    try:
        _undo(journal, committed)
        _end_swapping(journal)
        _clean_up(journal)
    except BaseException as undo_error:
        exc.add_note(
            f"undoing the publish failed too ({undo_error}); the next publish to {where} finishes or undoes it first"
        )
        return
    if isinstance(exc, OSError) and exc.errno is not None:
        what = f"{exc.strerror}: {exc.filename}" if exc.filename else f"{exc.strerror}, at: {failed_at}"
        raise OSError(
            exc.errno,
            f"cannot publish to {where} ({what}); the previous outputs are left as they were. "
            "Free space on that disk, or make the folder writable, then run again",
        ) from exc


# --- recovery ----------------------------------------------------------------------------------------------


def recover_interrupted_publish(folders: Iterable[Path], timeout: float = 120.0) -> list[str]:
    """Finish or undo a publish interrupted in `folders` (a kill, a power cut), under their locks; what was done.
    A folder that does not exist has nothing to recover (and is not created)."""
    with publishing([f for f in folders if Path(f).is_dir()], timeout) as done:
        return done


def recover(folders: Iterable[Path]) -> list[str]:
    """Finish or undo the publishes interrupted in `folders`; the caller holds the locks of these folders and
    of every folder their journals name (`publishing` takes them). What was done, one line per publish."""
    done = []
    ordered = sorted({Path(f).absolute() for f in folders})
    for folder in ordered:
        if os.path.lexists(folder / JOURNAL_NAME):
            done.append(_recover(Journal.load(folder / JOURNAL_NAME)))
    for folder in ordered:  # a journal's temporary file, left by a kill while it was written; a mark left alone
        for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
            if name == _JOURNAL_TMP or (_MARK.fullmatch(name) and not os.path.lexists(folder / JOURNAL_NAME)):
                _operation(f"remove {folder / name}")
                (folder / name).unlink()
    for line in done:
        log.warning("%s", line)
    return done


def _recover(journal: Journal) -> str:
    where = " and ".join(str(f) for f in journal.folders)
    if os.path.lexists(journal.swapping_mark):
        if os.path.lexists(journal.committed_mark):
            try:
                _swap(journal)
                outcome = "finished (rolled forward)"
            except OSError as exc:
                log.warning("could not finish the interrupted publish %s (%s): undoing it", journal.token, exc)
                _undo(journal, committed=True)
                outcome = "undone (rolled back: finishing it failed)"
        else:
            _undo(journal, committed=False)
            outcome = "undone (rolled back: it was interrupted before every new file was staged)"
        _end_swapping(journal)
    else:
        outcome = "cleaned up (it had not begun its swap, or the swap was over)"
    _clean_up(journal)
    return f"the publish {journal.token} to {where}, interrupted, was {outcome}"


def _with_journal_folders(folders: set[Path]) -> set[Path]:
    """`folders` and every folder that a journal in them names, and so on."""
    found, queue = set(folders), list(folders)
    while queue:
        journal_file = queue.pop() / JOURNAL_NAME
        try:
            named = Journal.load(journal_file).folders
        except FileNotFoundError:
            continue
        except PublishJournalError:
            if not os.path.lexists(journal_file):  # removed while being read: its publish is over
                continue
            raise
        for folder in named:
            if folder.is_dir() and not any(_same_folder(folder, f) for f in found):
                found.add(folder)
                queue.append(folder)
    return found


def _token_of(journal_file: Path) -> str | None:
    try:
        token = json.loads(journal_file.read_bytes()).get("token")
    except (OSError, ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


# --- file operations ---------------------------------------------------------------------------------------

_operations: list[str] = []


def operations() -> list[str]:
    """The file operations of this process's latest publish or recovery, in order (what KILL_AFTER_ENV counts)."""
    return list(_operations)


def _operation(what: str) -> None:
    limit = os.environ.get(KILL_AFTER_ENV)
    if limit is not None and len(_operations) >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)
    _operations.append(what)


def _write_new_file(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """A file that did not exist, with the permissions of any new file, on disk when this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o666 & ~umask())


def _copy_file(source: str | Path, destination: str | Path) -> None:
    with open(source, "rb") as src:
        _write_new_file(Path(destination), lambda f: shutil.copyfileobj(src, f, _CHUNK))


def _create_mark(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False


def _remove(path: Path) -> None:
    if _is_folder(path):
        shutil.rmtree(path)
    else:
        path.unlink()


def _sync_folder(folder: Path) -> None:
    """Make the folder's renames and new names durable (a power cut keeps them); not every file system can."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
