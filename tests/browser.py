"""Headless Chromium for the tests that open our pages as a user's browser would (the 360-degree
viewer, the Leaflet site map); those tests skip where it is not installed."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
from PIL import Image

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)


def chromium(tmp_path, url, *, size=(640, 480), screenshot=None, extra=(), budget_ms=3000, until=None):
    """Open ``url`` in a ``size`` window; return the screenshot as an RGB array, or the DOM text.

    ``until``: a test of the result that says the page has drawn. Chromium's virtual time does
    not wait for image decoding, so on a loaded machine a screenshot can come before the images
    are drawn (CI once saw the viewer's preview without its tiles); until it passes, the page is
    opened again with a longer budget (10 s, then 30 s: the user waiting longer). A page that
    never draws still fails the caller's assertions."""
    budgets = [budget_ms] + ([b for b in (10000, 30000) if b > budget_ms] if until else [])
    for budget in budgets:
        got = _once(tmp_path, url, size, screenshot, extra, budget)
        if until is None or until(got):
            break
    return got


def _once(tmp_path, url, size, screenshot, extra, budget_ms):
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--window-size={size[0]},{size[1]}", "--force-device-scale-factor=1",
            f"--virtual-time-budget={budget_ms}", *extra]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    r = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if screenshot:
        return np.asarray(Image.open(screenshot).convert("RGB"))
    return r.stdout
