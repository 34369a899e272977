"""Atomic output: write under a temporary name beside the target, then rename.

A reader never sees a half-written file, and a failure leaves whatever was there before.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


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


def output_dir(path) -> Path:
    """Create the output folder ``path`` (and its parents), or raise InputError naming it: a run
    must learn that it cannot write its results before it spends time computing them."""
    from calib.errors import InputError

    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(path, f"cannot create the output folder: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(path, f"output folder is not writable ({probe})")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise InputError(path, f"cannot write into the output folder ({e.strerror or e})") from None
    return path


def remove_stale(folder, names) -> int:
    """Remove what a killed run left beside the outputs ``names`` in ``folder``: the hidden
    ``.{stem}.*`` temporary files and folders that ``atomic_path`` and ``mosaic.cog.CogWriter``
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
