"""mosaic.runtime.memory: freed native memory handed back to the system (glibc malloc_trim)."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from mosaic.runtime.memory import tree_rss, trim_freed


def _has_malloc_trim() -> bool:
    try:
        ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _has_malloc_trim(), reason="no glibc malloc_trim")
def test_trim_returns_memory_freed_in_a_worker_thread():
    """64 KiB blocks (below the mmap threshold) come from the thread's malloc arena; freeing 9 in
    10 leaves holes that the allocator keeps resident (~110 MiB here) until it is trimmed."""
    kept = []

    def work():
        blocks = [np.ones(8192) for _ in range(2000)]
        kept.extend(blocks[::10])

    t = threading.Thread(target=work)
    t.start()
    t.join()
    before = tree_rss()
    assert trim_freed()
    assert before - tree_rss() > 60 * 2**20
    assert all(b[0] == 1.0 for b in kept)  # what is still in use stays intact


_RENDER_PEAK = r"""
import json, resource, sys
from mosaic.render import render_panorama
r = render_panorama(sys.argv[1], sys.argv[2], resolution=float(sys.argv[3]), tile=512)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "px": r["width"] * r["height"]}))
"""


@pytest.mark.slow
def test_render_peak_does_not_grow_with_the_panorama(tmp_path):
    """The same frames rendered at a fixed tile size into a 4 MP and a 72 MP panorama: the peak
    memory of the process stays within 64 MiB (measured: 208 and 240 MiB), where holding the
    bigger panorama (two 8-bit bands) would alone add 137 MiB. Each render in a fresh process, so
    each peak is its own."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sol = repo / "sample_tiles" / "navcam_360" / "truth" / "solution.json"
    if not sol.is_file():
        pytest.skip("sample_tiles/navcam_360 is not in this checkout")
    runs = []
    for res in (0.125, 0.03):
        r = subprocess.run([sys.executable, "-c", _RENDER_PEAK, str(sol), str(tmp_path / f"r{res}"), str(res)],
                           capture_output=True, text=True, timeout=300, cwd=repo)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    small, big = runs
    assert big["px"] > 15 * small["px"]
    assert (big["peak_kib"] - small["peak_kib"]) / 1024 < 64, runs
