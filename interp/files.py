"""Files: the one atomic writer, the one JSON reader, file sets and folder locks of the package
(the lowest layer, imports nothing of interp).

`write_atomic` gives a file the permissions an ordinary `open(path, "w")` would (0o666 less the umask), so a
report in a shared folder is readable by colleagues; the data and the folder entry are fsynced before it returns.
`write_file_set` writes several files so that a reader can tell whether they are one complete set (a marker
written last lists each file's sha256; `verify_file_set` checks it). `FileLock` is an OS lock (`flock`) that
dies with its process, so a killed writer never leaves a stale lock; `shared_folder` uses two of them so that
processes doing the same work share a folder and only a process alone in it may change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def write_atomic(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write to a temp file beside `path`, fsync it, rename it over `path`, fsync the folder.

    Readers see the old file or the new one, never half of one; a crash leaves at most a
    `.NAME.XXXXXXXX.tmp` file, which `remove_temp_files` cleans up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    temp = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    # O_EXCL: never follow or reuse an existing file; mode 0o666 is filtered by the umask, as open() does.
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files a killed `write_atomic` left in `folder` (not recursive); returns them."""
    if not folder.is_dir():
        return []
    stale = [path for path in folder.iterdir()
             if path.is_file() and path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """Parse a JSON file, or raise ValueError naming the file, what it is, what is wrong and `fix`.

    what: e.g. "config", "manifest"; fix: e.g. "re-save the model with save_pretrained".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"The {what} file {path} is damaged (not UTF-8 text at byte {error.start}); {fix}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        detail = "it is empty" if not text.strip() else f"{error.msg} at line {error.lineno} column {error.colno}"
        raise ValueError(f"The {what} file {path} is damaged (not valid JSON: {detail}); {fix}.") from None


# ----- file sets ---------------------------------------------------------------------------------
class IncompleteFileSet(ValueError):
    """The files of a set were not all written together (or one changed since)."""


def write_file_set(folder: str | os.PathLike, contents: dict[str, str | bytes], marker: str,
                   about: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write `contents` (file name -> data) into `folder` so readers can tell a complete set.

    The old `marker` is removed first, then each file is written atomically, then `marker` is written last,
    listing each file's sha256 (and `about`). A crash in between leaves no marker: `verify_file_set` says the
    set is incomplete. Render everything before calling this, so a failed render leaves the old set whole.
    """
    folder = Path(folder)
    data = {name: content.encode("utf-8") if isinstance(content, str) else content for name, content in contents.items()}
    (folder / marker).unlink(missing_ok=True)
    fsync_folder(folder)
    paths = {name: write_atomic(folder / name, content) for name, content in data.items()}
    digests = {name: hashlib.sha256(content).hexdigest() for name, content in data.items()}
    record = {**(about or {}), "files": digests}
    write_atomic(folder / marker, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return paths


def verify_file_set(folder: str | os.PathLike, marker: str, fix: str) -> dict[str, Any]:
    """The marker's record when every file it lists is present with its sha256.

    Raises IncompleteFileSet naming the folder, what is missing or changed, and `fix`.
    """
    folder = Path(folder)
    path = folder / marker
    if not path.exists():
        raise IncompleteFileSet(f"The files in {folder} are an incomplete set: {marker} is missing, so they were not "
                                f"all written together (the run writing them stopped, or they were copied without "
                                f"it); {fix}.")
    try:
        record = read_json(path, "completion marker", fix)
    except ValueError as error:
        raise IncompleteFileSet(str(error)) from None
    listed = record.get("files") if isinstance(record, dict) else None
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise IncompleteFileSet(f"The completion marker {path} is damaged (no file list); {fix}.")
    for name, digest in sorted(listed.items()):
        file = folder / name
        if not file.is_file() or sha256_file(file) != digest:
            state = "missing" if not file.is_file() else "changed since the set was written"
            raise IncompleteFileSet(f"The files in {folder} are an incomplete set: {name} is {state} "
                                    f"(see {marker}); {fix}.")
    return record


def json_sha256(value: Any) -> str:
    """sha256 of `value` as canonical JSON (sorted keys, no spaces, no NaN)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----- locks -------------------------------------------------------------------------------------
class FileLock:
    """An advisory OS lock (`flock`) on the file `path`, shared or exclusive.

    The OS drops it when the file is closed or the process dies (even by `kill -9`), so it is never stale.
    Two `FileLock`s on one path conflict even inside one process.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        if fcntl is None:
            raise OSError("Locking a run folder needs fcntl.flock, which this platform lacks; run on Linux or macOS.")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._handle: int | None = os.open(self.path, flags, 0o666)

    def acquire(self, exclusive: bool, wait: bool = False) -> bool:
        """Take the lock (or convert the one held); without `wait`, False if another holder conflicts.

        Converting is not atomic (flock drops the old lock first): hold a second lock around it.
        """
        assert self._handle is not None, "the lock is closed"
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(self._handle, mode)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        """Release the lock (the lock file stays: its existence means nothing)."""
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FolderBusyError(OSError):
    """Another process holds the folder for different work."""


LOCK_NAME = ".lock"  # held shared by every process working in the folder
SETUP_LOCK_NAME = ".lock-setup"  # held exclusively, briefly, to check or change the folder


@contextmanager
def setup_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`'s brief exclusive lock (waiting for it): for checks and changes that must not interleave."""
    with FileLock(folder / SETUP_LOCK_NAME) as lock:
        lock.acquire(exclusive=True, wait=True)
        yield


@contextmanager
def shared_folder(folder: Path, prepare: Callable[[], None], may_join: Callable[[], bool]) -> Iterator[None]:
    """Work in `folder` alongside processes doing the same work; change it only when alone.

    Under `setup_lock`: if no other process holds `folder/.lock`, `prepare()` runs (it may clean and change
    the folder); otherwise this process joins only if `may_join()`, else FolderBusyError. Then `.lock` is held
    shared until the block ends. Both locks die with the process.
    """
    folder.mkdir(parents=True, exist_ok=True)
    busy = FolderBusyError(f"{folder} is in use: another run holds its lock ({folder / LOCK_NAME}); wait for it "
                           "to finish, or use a different --out (shards of one run may share a folder).")
    with FileLock(folder / LOCK_NAME) as lock:
        with setup_lock(folder):
            if lock.acquire(exclusive=True):  # alone
                prepare()
            elif not may_join():
                raise busy
            if not lock.acquire(exclusive=False):  # converting is safe here: others wait for the setup lock
                raise busy
        yield
