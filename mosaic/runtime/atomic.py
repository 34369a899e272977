"""Atomic output: write under a temporary name beside the target, then rename.

A reader never sees a half-written file, and a failure leaves whatever was there before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

from calib.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success.

    The temporary name keeps the target's suffix (GDAL picks drivers by it) unless ``suffix``
    is given. On any exception the temporary file is removed and the target is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    # mkstemp creates 0600; outputs are ordinary files, readable as the umask allows.
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def check_output_dir(path) -> Path:
    """Raise InputError naming ``path`` when the output folder cannot be made or written, without
    making it: a run must learn that before it spends time reading its inputs."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(path, f"cannot create the output folder: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(path, f"output folder is not writable ({probe})")
    return path


def output_dir(path) -> Path:
    """Create the output folder ``path`` (and its parents), or raise InputError naming it."""
    path = check_output_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        if disk_full(e):
            raise OutputError(path, full_message(e)) from None
        raise InputError(path, f"cannot write into the output folder ({e.strerror or e})") from None
    return path


def remove_stale(folder, names) -> int:
    """Remove what a killed run left beside the outputs ``names`` in ``folder``: the hidden
    ``.{stem}.*`` temporary files and folders that ``atomic_path`` and ``mosaic.formats.cog.CogWriter``
    create (an exception removes them, SIGKILL cannot). Call it before a run writes there, never
    while another run writes into the same folder. Returns how many were removed."""
    import shutil

    n = 0
    folder = Path(folder)
    for name in names:
        for p in folder.glob(f".{Path(name).stem}.*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


def replace_dir(new, target) -> Path:
    """Put the finished folder ``new`` in place of ``target`` with two renames, so a reader (a web
    server serving tiles, say) sees the old folder or the new one, never a half-written mix."""
    import shutil

    new, target = Path(new), Path(target)
    os.chmod(new, 0o777 & ~_UMASK)  # mkdtemp's 0700 would hide it from a web server
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


# -- a run's products, published as one set ------------------------------------------------------

class OutputError(Exception):
    """The output folder could not take the products (a full disk, a quota): one line naming the
    folder and the cause, exit status 1. The folder keeps what it held before."""

    def __init__(self, folder, cause: str):
        self.folder = os.fspath(folder)
        super().__init__(f"{self.folder}: {cause}")


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "free disk space available is")


#: A write that fails with less than this free on the output's device (or 2 % of a small device)
#: failed for want of space.
FULL_MARGIN = 16 * 2**20
_WRITE_TEXT = ("write failed", "write error", "failed to write", "short write")


def _chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException, folder=None) -> BaseException | None:
    """The error in ``exc``'s chain that says the device (or the quota) is full, else None.

    GDAL reports a full disk as "Write failed" (libtiff prints the errno to stderr, not into the
    exception), and a task's error crosses dask as a plain Exception holding only its repr: so a
    failed write with ``folder`` given counts as a full disk when that folder's device has less
    than FULL_MARGIN free. Call it before the failed run's temporary files are removed."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL:
            return e
        if any(t in str(e).lower() for t in _FULL_TEXT):
            return e
    if folder is not None:
        import shutil

        for e in _chain(exc):
            if any(t in str(e).lower() for t in _WRITE_TEXT) or (isinstance(e, OSError) and e.errno == errno.EIO):
                try:
                    usage = shutil.disk_usage(folder)
                except OSError:
                    return None
                free = usage.free
                if free < min(FULL_MARGIN, max(64 * 1024, usage.total // 50)):
                    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free // 1024} KiB free)")
    return None


def full_message(exc: BaseException) -> str:
    """``exc`` (a disk_full error) as the cause part of an OutputError line."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        what = exc.strerror or os.strerror(exc.errno)
        what = what[:1].lower() + what[1:]
        return f"{what} (writing {exc.filename})" if exc.filename else what
    return str(exc).splitlines()[0] if str(exc).strip() else "no space left on device"


class Products:
    """A run's products, written into a hidden staging folder beside them and put in place as a
    set by ``publish()``: the output folder holds the earlier run's products or this run's, never
    a new panorama beside an old preview. Without ``publish()`` (an error, a full disk) the staging
    folder is removed and the folder is as it was.

    ``path(name)`` is where to write a product; ``keep(name)`` says the earlier run's file belongs
    to this set unchanged (a skipped render's panorama). Every name in ``names`` that this run
    neither wrote nor kept is removed at publishing: it belonged to another solution.

    A rename needs no space, so once every product is staged the set goes in whatever the disk's
    state; only a crash between two renames (microseconds) can leave a mix, and the next run
    replaces it.
    """

    STAGING = "staging"  #: the hidden folder is ".staging.XXXX" (remove_stale finds it by this)

    def __init__(self, folder, names):
        self.folder = Path(folder)
        self.names = tuple(names)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.STAGING}.", dir=self.folder))
        self.kept: set = set()

    def path(self, name: str) -> Path:
        return self.dir / name

    def keep(self, name: str) -> bool:
        """Make the earlier run's ``name`` part of this set (a hard link into staging, so a reader
        of the staging folder sees it too); False when there is none."""
        src = self.folder / name
        if not src.exists():
            return False
        try:
            os.link(src, self.dir / name)
        except OSError:
            import shutil

            shutil.copy2(src, self.dir / name)
        self.kept.add(name)
        return True

    def publish(self) -> list[str]:
        """Put the staged products in place; returns their names."""
        staged = sorted(p.name for p in self.dir.iterdir())
        for name in self.names:
            if name not in staged:
                (self.folder / name).unlink(missing_ok=True)
        for name in staged:
            os.replace(self.dir / name, self.folder / name)
        self.discard()
        return staged

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and not isinstance(exc, OutputError):
            full = disk_full(exc, self.folder)  # now: the staged files still take their space
            if full is not None:
                self.discard()
                raise OutputError(self.folder, f"{full_message(full)}; the folder keeps the products of the "
                                               "earlier run, if any (nothing of this run was published)") from exc
        self.discard()
        return False
