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


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")
