"""The README's first hour, checked: a fresh clone in a temporary folder, then its two commands.

The clone (of the current commit: commit first) has no ``../shared`` beside it, and runs with a PATH
that holds every program of this machine's PATH except the outside tools the project can use but
must not need: GDAL's programs (gdal-bin), Hugin's (hugin-tools), enblend/enfuse and the browsers.
The synthetic test scenes are made afresh (MOSAIC_TEST_CACHE in the temporary folder), as for a
new user. ``make demo`` and ``make test`` then run exactly as the README says, and the script
prints one summary line: each command's result and time, the test counts, the install's
deprecation warnings, the tools hidden, and whether the system's packages changed (the test
command must install nothing system-wide). The tail of a failed step's log goes to stderr.

    python3 tests/fresh_clone.py            # ~6 min on 2 cores
    python3 tests/fresh_clone.py --keep     # keep the temporary folder (its logs, out/)

Exit status 0 when both commands succeed, 1 otherwise. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Debian packages whose programs are hidden, and name patterns for the same tools installed otherwise.
PACKAGES = ("gdal-bin", "hugin-tools", "enblend", "chromium", "chromium-browser")
PATTERNS = re.compile(r"^(gdal\w*|ogr\w*|gnm\w*|nearblack|nona|enblend|enfuse|pto_\w+|cpfind|cpclean|autooptimiser"
                      r"|pano_modify|hugin\w*|icpfind|celeste_standalone|linefind|align_image_stack"
                      r"|chromium\w*|google-chrome\w*|chrome)(\.py)?$")


def _git(*args, cwd=REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _package_programs() -> set:
    names = set()
    if shutil.which("dpkg"):
        for pkg in PACKAGES:
            r = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
            names |= {Path(p).name for p in r.stdout.splitlines() if "/bin/" in p}
    return names


def shadow_path(folder: Path) -> tuple[str, list]:
    """A folder of links to every program on PATH but the outside tools; (PATH, names hidden)."""
    folder.mkdir(parents=True)
    hide = _package_programs()
    hidden, seen = set(), set()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if name in seen or not (os.path.isfile(p) and os.access(p, os.X_OK)):
                continue
            seen.add(name)
            if name in hide or PATTERNS.match(name):
                hidden.add(name)
                continue
            os.symlink(os.path.realpath(p), folder / name)
    return str(folder), sorted(hidden)


def _system_packages() -> str:
    if not shutil.which("dpkg-query"):
        return ""
    return subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n"], capture_output=True,
                          text=True).stdout


def _run(cmd, cwd, env, log: Path) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0, log.read_text(errors="replace")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--skip-demo", action="store_true", help="only make test")
    args = ap.parse_args(argv)

    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    tmp = Path(tempfile.mkdtemp(prefix="fresh-clone."))
    clone = tmp / "jezero-mosaic"
    ok = True
    try:
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", commit], check=True)
        assert not (clone.parent / "shared").exists()
        path, hidden = shadow_path(tmp / "bin")
        env = {k: v for k, v in os.environ.items()
               if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER", "VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS")}
        env.update(PATH=path, MOSAIC_TEST_CACHE=str(tmp / "scene-cache"))
        packages = _system_packages()
        parts = [f"fresh clone of {commit[:10]}{' (the working tree has uncommitted changes, not in it)' if dirty else ''}"]
        if not args.skip_demo:
            rc, secs, log = _run(["make", "demo"], clone, env, tmp / "demo.log")
            made = all((clone / "out" / "navcam_360" / n).is_file() for n in ("panorama.tif", "index.html"))
            made = made and (clone / "out" / "navcam_stereo" / "dem.tif").is_file()
            deprecations = sum(1 for ln in log.splitlines() if "deprecat" in ln.lower())
            parts.append(f"make demo: {'ok' if rc == 0 and made else f'FAILED (exit {rc})'} in {secs:.0f} s, "
                         f"{deprecations} deprecation warning line(s)")
            if rc != 0 or not made:
                ok = False
                print(log[-4000:], file=sys.stderr)
        rc, secs, log = _run(["make", "test"], clone, env, tmp / "test.log")
        summary = next((ln.strip("= ") for ln in reversed(log.splitlines())
                        if re.search(r"\d+ (passed|failed|error)", ln)), "no pytest summary")
        tool_skips = sum(1 for ln in log.splitlines()
                         if ln.startswith("SKIPPED") and re.search(r"not installed|on PATH", ln))
        parts.append(f"make test: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.0f} s ({summary}; "
                     f"{tool_skips} skip line(s) naming a missing tool)")
        if rc != 0:
            ok = False
            print(log[-6000:], file=sys.stderr)
        changed = packages != _system_packages()
        shown = ", ".join(h for h in hidden if h in ("gdalinfo", "nona", "enblend", "chromium"))
        parts.append(f"hidden from PATH: {len(hidden)} programs ({shown}, ...); no ../shared; "
                     f"system packages {'CHANGED' if changed else 'unchanged'}")
        ok = ok and not changed
        print("; ".join(parts))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
