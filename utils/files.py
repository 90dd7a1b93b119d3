"""File-system primitives safe against concurrent runs: atomic writes, unique names, moving a run aside.

Every name made here is unique however fast two runs follow each other and whichever process asks:
temporary files and folders come from :mod:`tempfile` (random, created exclusively), and
time-stamped names reserve themselves with an exclusive ``mkdir`` and take a counter on a clash.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from utils.errors import UserError

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"  # temporary names: ``.{name}.tmp-{pid}-{random}``


def temporary_prefix(path: Path) -> str:
    return f".{path.name}{TMP_MARK}{os.getpid()}-"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)`` (a path that does not exist yet) then swap it in for ``path``; a failure
    leaves the old folder intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), dir=path.parent))
    tmp, old = scratch / "new", scratch / "old"
    try:
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def reserve_unique_dir(parent: str | Path, prefix: str) -> Path:
    """Create and return ``parent/{prefix}{timestamp}`` (``-2``, ``-3``... appended while taken).

    ``os.mkdir`` is exclusive, so two processes asking in the same second get two folders.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{prefix}{timestamp()}"
    for counter in range(1, 10_000):
        candidate = parent / (base if counter == 1 else f"{base}-{counter}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free name for {parent / base}")  # 10,000 runs in one second: not a real case


def move_aside(path: str | Path) -> Path:
    """Rename the folder ``path`` to ``{path}.old-{timestamp}[-N]`` beside it (never overwriting); returns
    the new name. The name is reserved first by an exclusive ``mkdir``; renaming over that empty folder is
    atomic, so a concurrent mover can neither take the same name nor lose a run."""
    path = Path(path)
    aside = reserve_unique_dir(path.parent, f"{path.name}.old-")
    os.replace(path, aside)
    return aside


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files and folders that killed writers left in ``folder`` (names with
    :data:`TMP_MARK` of a process that no longer runs). Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not entry.name.startswith(".") or TMP_MARK not in entry.name:
            continue
        pid = entry.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def ensure_writable(folder: str | Path) -> None:
    """Create ``folder`` and write a probe file in it; one-line :class:`UserError` if that is refused
    (read-only file system, missing permission), before any work is done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"--storage_directory: cannot write to {folder} ({error.strerror or error})") from None


_HELD: list[RunLock] = []


def release_run_locks() -> None:
    """Release every run lock this process holds (a script's end; the kernel does it at process exit)."""
    while _HELD:
        _HELD.pop().release()


class RunLock:
    """An exclusive OS lock on ``{run}.lock`` beside a run folder, held until the process ends: a second
    process on the same run fails at once, naming the holder. The kernel releases the lock of a process
    that died, so a stale lock file is simply taken over."""

    def __init__(self, run_folder: str | Path):
        self.path = Path(f"{run_folder}.lock")
        self.handle = open(self.path, "a+")  # kept open: closing it would release the lock
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise UserError(
                f"run {run_folder} is in use by {holder} (lock {self.path}); wait for it or stop it"
            ) from None
        self.handle.seek(0)
        previous = self.handle.read().strip()
        if previous:
            log.info("took over the lock of %s, left by %s (no longer running)", run_folder, previous)
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        self.handle.flush()
        _HELD.append(self)

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.seek(0)
            self.handle.truncate()
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
