"""The peers, run on the same inputs as `mosaic stitch`: OpenCV's stitcher and Hugin's chain.

Each runner returns a row: wall time (median of runs), peak memory of the process tree, frames
used and output size. A peer that is not installed returns None and the table says so.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from . import measure

_CV2_STITCH = r"""
import sys, cv2
out, paths = sys.argv[1], sys.argv[2:]
imgs = [cv2.imread(p) for p in paths]
st = cv2.Stitcher.create(cv2.Stitcher_PANORAMA)
status, pano = st.stitch(imgs)
if status != cv2.Stitcher_OK:
    print("status", status, "used 0 size 0x0")
    sys.exit(0)
cv2.imwrite(out, pano)
try:
    used = len(st.component())
except Exception:
    used = -1
print("status", status, "used", used, "size %dx%d" % (pano.shape[1], pano.shape[0]))
"""


def opencv_command(images, out) -> list[str]:
    """The command that stitches ``images`` with cv2.Stitcher (PANORAMA) into the JPEG ``out``."""
    return [measure.sys.executable, "-c", _CV2_STITCH, str(out), *map(str, images)]


def opencv_result(stdout: str, n_images: int) -> dict:
    """Frames used and output size from the command's output."""
    m = re.search(r"status (\d+) used (-?\d+) size (\d+)x(\d+)", stdout)
    used, w, h = (int(m.group(2)), int(m.group(3)), int(m.group(4))) if m else (0, 0, 0)
    return {"tool": "cv2.Stitcher", "frames_used": used, "frames": n_images, "output": f"{w}x{h}",
            "output_mp": w * h / 1e6}


def opencv_stitcher(images, runs: int = 3) -> dict:
    images = [str(p) for p in images]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = opencv_command(images, Path(tmp) / "cv2.jpg")
        wall, peak, last = measure.repeat(lambda: measure.run(cmd), runs)
    return {**opencv_result(last.stdout, len(images)), "wall_s": wall, "peak_mib": peak / 2**20}


HUGIN_TOOLS = ("pto_gen", "cpfind", "cpclean", "autooptimiser", "pano_modify", "nona", "enblend")


def hugin_available() -> bool:
    return all(shutil.which(t) for t in HUGIN_TOOLS)


def _hugin_script(images, tmp: Path, hfov: float | None) -> str:
    imgs = " ".join(f"'{p}'" for p in images)
    fov = f"--fov={hfov}" if hfov else ""
    return f"""set -e
cd '{tmp}'
pto_gen {fov} -o p.pto {imgs} >/dev/null
cpfind --multirow -o p.pto p.pto >/dev/null
cpclean -o p.pto p.pto >/dev/null
autooptimiser -a -m -l -s -o p.pto p.pto >/dev/null
pano_modify --canvas=AUTO --crop=AUTO -o p.pto p.pto >/dev/null
nona -m TIFF_m -o part p.pto
enblend -o pano.tif part*.tif >/dev/null 2>&1
"""


def hugin_chain(images, runs: int = 1, hfov: float | None = None) -> dict | None:
    """pto_gen, cpfind, cpclean, autooptimiser, pano_modify, nona, enblend, as the Hugin docs chain them."""
    if not hugin_available():
        return None
    images = [str(Path(p).resolve()) for p in images]
    walls, peaks = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            m = measure.run(["bash", "-c", _hugin_script(images, Path(tmp), hfov)])
            if m.returncode != 0:
                return {"tool": "Hugin", "error": m.stderr.strip().splitlines()[-1:] or ["failed"],
                        "frames": len(images)}
            walls.append(m.wall_s)
            peaks.append(m.peak_bytes)
            pto = (Path(tmp) / "p.pto").read_text()
            used = _hugin_connected(pto, len(images))
            size = _tiff_size(Path(tmp) / "pano.tif")
    walls.sort()
    return {"tool": "Hugin", "wall_s": walls[len(walls) // 2], "peak_mib": max(peaks) / 2**20,
            "frames_used": used, "frames": len(images), "output": f"{size[0]}x{size[1]}",
            "output_mp": size[0] * size[1] / 1e6}


def _hugin_connected(pto: str, n: int) -> int:
    """Frames in the largest group tied by control points (Hugin renders the rest unaligned)."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for m in re.finditer(r"^c n(\d+) N(\d+)", pto, re.M):
        a, b = int(m.group(1)), int(m.group(2))
        parent[find(a)] = find(b)
    sizes = {}
    for i in range(n):
        sizes[find(i)] = sizes.get(find(i), 0) + 1
    return max(sizes.values()) if sizes else 0


def _tiff_size(path: Path):
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Hugin's TIFF has no georeferencing, as expected
        with rasterio.open(path) as ds:
            return ds.width, ds.height
