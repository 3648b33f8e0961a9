"""An exclusive lock on an output folder, so two runs never write into one folder at once.

The lock is a file beside the folder (``.<name>.lock`` in its parent, so the folder's own
contents and the checks on them are unchanged) holding the owner's pid, host and command.
It is created atomically (``O_CREAT | O_EXCL``); a lock whose owner process is gone on
this host is stale and taken over; the lock is removed when the run ends, also on an
error or Ctrl-C.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FolderLocked", "LockHeld", "file_lock", "folder_lock", "lock_path"]


class FolderLocked(OSError):
    """Another live run holds the output folder."""


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def _owner(path: Path) -> dict | None:
    """The lock's owner record; None when the lock is unreadable or its owner is gone."""
    try:
        owner = json.loads(path.read_text())
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return _being_written(path)
    if owner.get("host") == socket.gethostname() and not _alive(pid):
        return None
    return owner


def _being_written(path: Path) -> dict | None:
    """An unreadable lock younger than 2 s is one whose owner is still writing its record."""
    import time

    try:
        young = time.time() - path.stat().st_mtime < 2.0
    except OSError:
        return None
    return {"pid": "?", "host": "?", "command": "starting"} if young else None


def _create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


class LockHeld(OSError):
    """A live process holds the lock; ``owner`` is its record (pid, host, command)."""

    def __init__(self, path: Path, owner: dict):
        super().__init__(f"{path} is held by pid {owner.get('pid')} on {owner.get('host')}")
        self.path, self.owner = path, owner


def _acquire(path: Path, command: str, wait_s: float = 0.0, poll_s: float = 0.2) -> None:
    """Create the lock ``path`` for this process; a stale one (its owner gone) is taken
    over. Waits up to ``wait_s`` for a live owner to let go, then raises :class:`LockHeld`."""
    import time

    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    deadline = time.monotonic() + wait_s
    while True:
        if _create(path, record):
            return
        owner = _owner(path)
        if owner is None:  # stale or unreadable: removed, then created again
            path.unlink(missing_ok=True)
            continue
        if time.monotonic() >= deadline:
            raise LockHeld(path, owner)
        time.sleep(poll_s)


@contextmanager
def file_lock(path: str | os.PathLike, command: str, wait_s: float = 0.0):
    """Hold the lock file ``path`` (pid-stamped, stale ones taken over) for the block,
    waiting up to ``wait_s`` seconds for a live owner. Raises :class:`LockHeld`."""
    path = Path(path)
    _acquire(path, command, wait_s)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str | None = None):
    """Hold the exclusive lock of ``folder`` (created with its parents) for the block.

    Raises:
        FolderLocked: a live run holds it (the message names the owner).
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
    try:
        with file_lock(path, command):
            yield path
    except LockHeld as e:
        if e.path != path:
            raise
        owner = e.owner
        raise FolderLocked(
            f"{path.parent / path.name[1:-5]} is in use by another run ({owner.get('command')}, "
            f"pid {owner.get('pid')} on {owner.get('host')}); wait for it to end, or "
            f"delete {path} if that run is gone") from None
