"""Throughput of the camera models: project and back-project 1 M points (points per second).

Uses the real Perseverance Navcam CAHVORE model (../shared/realdata) when present, else the
nominal one. Prints the median of a few runs, per operation and model type.

    .venv/bin/python -m benchmarks.bench_models [--n 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
NLF = "m20-navcam-mru-tiles/NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01.png"
MER = "mer-b-navcam-p0706/1N491020376ILFCNY9P0706L0M1.IMG"


def _models():
    from calib.labels import read_frame

    out = []
    if (REALDATA / NLF).exists():
        m = read_frame(REALDATA / NLF)
        out.append(("CAHVORE (M20 Navcam)", m.model, m.width, m.height))
        out.append(("CAHV (its linear part)", m.model.linear(), m.width, m.height))
    if (REALDATA / MER).exists():
        m = read_frame(REALDATA / MER)
        out.append(("CAHVOR (MER Navcam)", m.model, m.width, m.height))
    if not out:
        from calib.models import CAHVORE

        nav = CAHVORE(
            C=[0.95, 0.35, -1.89], A=[0.824, 0.029, 0.566], H=[2041.2, 3032.24, 1457.62],
            V=[-71.09, 9.02, 3538.0], O=[0.824, 0.030, 0.566], R=[1.7e-6, 0.0501, -0.0171],
            E=[-8e-9, 1e-8, -2.9e-8], T=2, P=0.0,
        )
        out.append(("CAHVORE (nominal Navcam)", nav, 1288, 968))
    return out


def _time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="points per call")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'model':26s} {'operation':12s} {'points/s':>12s} {'s/call':>8s}  max round-trip px")
    for name, model, w, h in _models():
        pix = np.stack([rng.uniform(0, w - 1, args.n), rng.uniform(0, h - 1, args.n)], axis=1)
        o, d = model.backproject(pix)
        pts = o + rng.uniform(1.0, 100.0, (args.n, 1)) * d
        t_proj = _time(lambda: model.project(pts), args.repeat)
        t_back = _time(lambda: model.backproject(pix), args.repeat)
        t_jac = _time(lambda: model.project_jacobian(pts), args.repeat)
        err = float(np.nanmax(np.abs(model.project(pts) - pix)))
        for op, t in (("project", t_proj), ("backproject", t_back), ("jacobian", t_jac)):
            print(f"{name:26s} {op:12s} {args.n / t:12.3g} {t:8.3f}  {err:.1e}" if op == "project"
                  else f"{name:26s} {op:12s} {args.n / t:12.3g} {t:8.3f}")


if __name__ == "__main__":
    main()
