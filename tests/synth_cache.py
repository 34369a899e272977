"""Small synthetic scenes for the end-to-end tests (resume, faults, cluster, batch, bad input).

``mosaic synth`` takes ~30 s even at 1/16 scale on two cores, so a scene is generated once and
kept under ``$MOSAIC_TEST_CACHE`` (default: the system temp folder), keyed by the synth code's
hash: a change to the generator makes a fresh scene. The same arguments give the same bytes, so
a cached scene is exactly what a fresh one would be.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: navcam-360 frames kept for the quick panorama: azimuths 0 and 72 degrees on both tiers
#: (every frame overlaps two or three others).
QUICK_360 = ("NCAM10000_", "NCAM10001_", "NCAM10005_", "NCAM10006_")
#: navcam-stereo frames kept for the quick terrain: two left/right pairs.
QUICK_STEREO = ("NCAM20000_", "NCAM20001_")


def _code_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((REPO / "mosaic" / "synth").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def scene(name: str, scale: int = 16, seed: int = 0, keep: tuple[str, ...] | None = None) -> Path:
    """A folder of frames of ``mosaic synth --scene name``; with ``keep``, only the frames whose
    file names contain one of those strings (truth/ and scene.json are dropped then)."""
    from mosaic.synth import writer

    root = Path(os.environ.get("MOSAIC_TEST_CACHE") or Path(tempfile.gettempdir()) / "mosaic-test-scenes")
    tag = hashlib.sha256(repr(keep).encode()).hexdigest()[:8] if keep else "all"
    target = root / f"{name}-x{scale}-s{seed}-{tag}-{_code_hash()}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        writer.synthesise(tmp, name, seed=seed, scale=scale)
        if keep:
            shutil.rmtree(tmp / "truth", ignore_errors=True)
            for p in tmp.iterdir():
                if p.is_file() and not any(k in p.name for k in keep):
                    p.unlink()
        try:
            os.replace(tmp, target)
        except OSError:  # another session built it meanwhile: same bytes
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def listing(folder) -> dict:
    """Every path under ``folder`` (relative) -> (size, mtime_ns), except the workspace ``work/``."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.relative_to(folder).parts[0] != "work"}


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
