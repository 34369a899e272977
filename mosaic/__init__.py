"""Jezero mosaic builder: Mars rover frames to seamless panoramas and georeferenced terrain.

The Python API has the commands' options and returns paths and statistics::

    import mosaic

    scene = mosaic.synth("out/scene", scene="navcam-360", seed=1, scale=16)
    pan = mosaic.stitch(scene["out"], "out/pan")             # same options as `mosaic stitch`
    pan["panorama"], pan["products"]["quality"], pan["stats"]["rms_px"]
    site = mosaic.terrain("sample_tiles/navcam_stereo", "out/site", gsd=0.05, radius=10)
    site["paths"]["dem"], site["coverage"]
    mosaic.info("sample_tiles/navcam_360")["overlaps"]
    mosaic.evaluate("out/pan", "out/scene")["pointing"]

``mosaic.stitch``, ``mosaic.terrain``, ``mosaic.synth``, ``mosaic.info`` and ``mosaic.evaluate``
are also the modules (packages) that implement the commands: calling one runs the command, and
its attributes are the implementation's (``mosaic.stitch.PeakMemory``, ``mosaic.terrain.pipeline``).
Runnable examples: docs/user-guide.md (tested by tests/test_api.py).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

# Bound under private names: the package's public names are the five commands (__all__).
from calib.errors import InputError as _InputError
from calib.labels import discover as _discover
from mosaic.runtime.config import StitchConfig as _StitchConfig

from . import evaluate as _evaluate_command
from . import stitch as _stitch_command
from .info import describe as _describe
from .synth import writer as _synth_writer
from .terrain import pipeline as _terrain_pipeline

__all__ = ["stitch", "terrain", "synth", "info", "evaluate"]


def _paths(inputs) -> list:
    """One path or many, as the commands' IN arguments."""
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    return [str(p) for p in inputs]


def _stitch(inputs, out, config=None, **options) -> dict:
    """``mosaic stitch``: register ``inputs`` (files or folders) and render into ``out``.

    ``config``: a :class:`mosaic.runtime.config.StitchConfig` or the path of a TOML file; ``options``:
    StitchConfig fields over it (``hfov=48``, ``feature="orb"``, ``render=False``,
    ``workers=2``, ``scheduler="tcp://..."``). Returns ``{"solution", "report", "panorama",
    "preview", "products": {"viewer", "quality", "pto"}, "stats": {"rms_px", "frames_used",
    ...}}`` (paths as strings; no panorama keys with ``render=False``).
    """
    if isinstance(config, (str, Path)):
        config, options = _StitchConfig.from_toml(config, **options), {}
    return _stitch_command.stitch(_paths(inputs), out, config, **options)


def _terrain(inputs, out, **options) -> dict:
    """``mosaic terrain``: a DEM and orthoimage of the site from stereo frames into ``out``.

    ``options``: ``gsd``, ``radius``, ``site_origin`` ("LAT,LON,ELEV"), ``solution`` (a
    solution.json), ``min_range``, ``max_range``, ``scheduler``, ``workspace``, ``web``, ... as
    the command's flags. Returns the run report (``report.json``) with ``"paths"``: the products
    written (dem, ortho, report, item, index, tiles, hillshade).
    """
    report = _terrain_pipeline.terrain(_paths(inputs), out, **options)
    names = {"dem": "dem.tif", "ortho": "ortho.tif", "report": "report.json", "item": "item.json",
             "index": "index.html", "tiles": "tiles", "hillshade": "hillshade"}
    report["paths"] = {k: str(Path(out) / v) for k, v in names.items() if (Path(out) / v).exists()}
    return report


def _synth(out, scene: str, seed: int = 0, scale: int | None = None, zoom: float | None = None,
           tiles: bool = False, jobs: int | None = None) -> dict:
    """``mosaic synth``: a synthetic scene with ground truth in ``out``; returns ``{"out",
    "frames" (count), "scene" (the parameters in scene.json), "seconds"}``."""
    if scale is not None and not 1 <= scale <= 64:
        raise _InputError(None, f"scale must be 1-64, got {scale}", field="scale")
    params, timing = _synth_writer.synthesise(out, scene, seed=seed, scale=scale, zoom_mm=zoom, tiles=tiles, jobs=jobs)
    return {"out": str(out), "frames": len(params["frames"]), "scene": params, "seconds": timing}


def _info(paths, radius: float = 50.0, recursive: bool = True) -> dict:
    """``mosaic info --json``: the frames (instrument, size, model, field of view, pointing) and
    their predicted overlaps, as one dict (docs/formats.md)."""
    paths = _paths(paths)
    metas = _discover(paths, recursive=recursive)
    if not metas:
        raise _InputError(" ".join(paths), "no frames found (images, .IMG, JSON records or PDS4 labels)")
    return _describe(metas, radius=radius)


def _evaluate(out, truth=None, dem=None) -> dict:
    """``mosaic eval``: a solution (and DEM) against a synthetic scene's truth, and the seamlessness
    of its panorama."""
    return _evaluate_command.evaluate(out, truth, dem=dem)


class _Command(types.ModuleType):
    """A command's module that can also be called: ``mosaic.stitch(...)``."""

    def __call__(self, *args, **kwargs):
        return self.__api__(*args, **kwargs)


_API = {"stitch": ("mosaic.stitch", _stitch), "terrain": ("mosaic.terrain", _terrain),
        "synth": ("mosaic.synth", _synth), "info": ("mosaic.info", _info),
        "evaluate": ("mosaic.evaluate", _evaluate)}


def _wire():
    # The modules are imported here (numpy and the camera models, ~0.3 s; every `mosaic` command
    # imports them anyway for its parser) so that the call works however a module was reached:
    # `import mosaic.stitch` binds the package attribute to the module itself.
    for modname, func in _API.values():
        mod = importlib.import_module(modname)
        if not isinstance(mod, _Command):
            mod.__class__ = _Command
            mod.__api__ = func


_wire()


# Import paths the user guide documented before the modules moved into one folder per role
# (docs/architecture.md): the same module objects under their old names, so that code written
# against them keeps working. The project itself imports only the new homes (a test holds it).
_DOCUMENTED_PATHS = {"mosaic.config": "mosaic.runtime.config", "mosaic.progress": "mosaic.runtime.progress",
                     "mosaic.lock": "mosaic.runtime.lock", "mosaic.preflight": "mosaic.pipeline.preflight",
                     "mosaic.pixels": "mosaic.formats.pixels", "mosaic.viewer": "mosaic.formats.viewer",
                     "mosaic.viewer.tiles": "mosaic.formats.viewer.tiles"}


def _alias():
    for old, new in _DOCUMENTED_PATHS.items():
        mod = importlib.import_module(new)
        sys.modules.setdefault(old, mod)
        parent, _, leaf = old.rpartition(".")
        setattr(sys.modules[parent], leaf, mod)


_alias()
