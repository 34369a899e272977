"""The output folder's lock: one run writes into a folder at a time.

``OUT/.mosaic.lock`` names its owner (host, pid, command, start time) and is held with
``fcntl.flock`` for the whole run, so two runs on this host cannot both hold it, and the kernel
drops a killed run's hold. A second run refuses with exit status 2 and a line naming the owner.
The file is also read, because ``flock`` does not reach across hosts on every network filesystem:

- a lock of this host whose process is gone (a killed run) is stale: it is taken over;
- a lock of this host whose process lives is honoured, even with ``--force`` (two writers would
  mix their products);
- a lock of another host is honoured (its process cannot be checked from here) until ``--force``.

``held(out)`` is the context manager a run takes; ``check(out)`` is the early, read-only test
(before the inputs are checked, so a busy folder costs no time). ``mosaic batch`` takes one per job.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path

from calib.errors import InputError
from mosaic.runtime import atomic

NAME = ".mosaic.lock"


class FolderLocked(InputError):
    """Another run holds the output folder (exit status 2: the user chose the folder)."""


def _owner_text(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return (f"{info.get('command', 'mosaic')} run, pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"since {since}")


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or not ours: treat as a live lock of unknown owner
    return info if isinstance(info, dict) else {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _verdict(out: Path, info: dict | None, force: bool) -> str | None:
    """Why ``info`` (a lock file's contents, not held by flock) still forbids the run; None if not."""
    if info is None:
        return None
    here = socket.gethostname()
    host, pid = info.get("host"), info.get("pid")
    if host == here:
        if pid == os.getpid() or not _alive(pid):
            return None  # stale: the run that wrote it is gone
        return f"locked by a live {_owner_text(info)}"
    if force:
        return None
    return (f"locked by a {_owner_text(info)}; that host's process cannot be checked from here: "
            f"if that run is gone, run again with --force (or delete {out / NAME})")


def check(out, force: bool = False) -> None:
    """Refuse early (FolderLocked) when ``out`` is locked by a run that still counts; no side effects."""
    out = Path(out)
    path = out / NAME
    if not path.exists():
        return
    if _flock_busy(path):
        raise FolderLocked(out, f"locked by a running {_owner_text(_read(path) or {})}")
    why = _verdict(out, _read(path), force)
    if why:
        raise FolderLocked(out, why)


def _flock_busy(path: Path) -> bool:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def held(out, force: bool = False, command: str = "mosaic"):
    """Hold ``out``'s lock for the block (``out`` must exist); FolderLocked when another run has it."""
    import fcntl

    out = Path(out)
    path = out / NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise FolderLocked(out, f"{NAME} belongs to another user (a {_owner_text(_read(path) or {})}); "
                                    "this user cannot take it over") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderLocked(out, f"locked by a running {_owner_text(_read(path) or {})}") from None
            raise
        # The holder before us may have removed the file between our open and our flock: then we
        # hold a lock on a name nobody sees. Start again on the current file.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        raw = os.read(fd, 1 << 16)
        info = None
        if raw.strip():
            try:
                info = json.loads(raw)
            except ValueError:
                info = {}
        why = _verdict(out, info if isinstance(info, dict) or info is None else {}, force)
        if why:
            raise FolderLocked(out, why)
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                         "started": time.time()}).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, me)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield path
    finally:
        # Remove the name first, then let go: a run that opened the old name re-checks the inode.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def output_folder(out, force: bool = False, command: str = "mosaic"):
    """Check, create and hold the output folder ``out`` for the block: what a command that writes
    into a folder (``mosaic batch``'s terrain jobs, say) wraps its run in."""
    atomic.check_output_dir(out)
    check(out, force=force)
    atomic.output_dir(out)
    with held(out, force=force, command=command) as path:
        yield path
