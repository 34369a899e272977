"""What ``mosaic stitch`` checks in the main process before it starts a cluster or writes a byte.

Bad input must cost the user seconds, not the first half of a run, and must end in one line naming
the file (exit 2) rather than in a worker's traceback. So, in order, cheapest first:

1. the inputs: they exist, and the output folder is not one of them nor holds one; the output
   folder and everything inside it are never inputs (it may sit inside the input folder, and a
   second run must not read its own panorama.tif, preview.jpg or quality.png as frames);
2. every frame's label or record (``calib.labels.discover`` parses them all): a frame with a
   sidecar record or label must carry a camera model and have its image beside it, and frames
   with and without camera models cannot be mixed;
3. the output size: the renderer's own planner on the reported camera models (for plain photos
   a lower bound from one photo's field of view), against ``max_megapixels``;
4. every frame's pixels, decoded completely by ``mosaic.formats.pixels.decode`` on a few threads, at the
   scale the features stage reads them (which keeps them for it).

The configuration's types and ranges are checked when the StitchConfig is made (mosaic.runtime.config).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from calib.errors import InputError, LabelError
from calib.labels import discover
from mosaic.formats import pixels
from mosaic.pipeline.stages.features import CONFIG_FIELDS, reads_reduced_jpeg, scales
from mosaic.pipeline.stages.ingest import frame_record
from mosaic.render.panorama import plan as render_plan
from mosaic.runtime.cluster import usable_cpus
from mosaic.runtime.config import render_options

log = logging.getLogger("mosaic")


@dataclass
class Checked:
    """What the checks found: the frames, and the files they came from (labels and images)."""

    inputs: list[str]
    metas: list
    files: list[str]
    seconds: dict = field(default_factory=dict)
    kept: int = 0          #: frames whose decoded pixels stayed in mosaic.formats.pixels.CACHE


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def resolve_inputs(inputs, out=None) -> list[str]:
    """The inputs as sorted absolute paths; InputError for one that does not exist, and for an
    output folder that is an input or holds one (the run would read its own products)."""
    paths = []
    for p in inputs:
        p = Path(p)
        if not p.exists():
            raise InputError(p, "no such file or directory")
        paths.append(str(p.resolve()))
    if not paths:
        raise InputError(None, "no inputs given")
    if out is not None:
        real_out = os.path.realpath(out)
        for p in paths:
            if _inside(os.path.realpath(p), real_out) and Path(p).is_dir():
                raise InputError(out, f"the output folder holds the input folder {p}; write to another folder")
    return sorted(set(paths))


def frames(paths, out=None, require: bool = True) -> list:
    """Every frame of the inputs, the output folder's contents left out; sorted by id. None at all
    is bad input unless ``require`` is off (the command then says what it needed)."""
    exclude = [out] if out is not None else []
    real_out = os.path.realpath(out) if out is not None else None
    keep = [p for p in paths if real_out is None or not _inside(os.path.realpath(p), real_out)]
    if not keep:
        raise InputError(out, "every input lies inside the output folder (the outputs of a run are never its inputs)")
    metas = discover(keep, exclude=exclude)
    if not metas and require:
        raise InputError(keep[0], "no frames found in the inputs")
    return sorted(metas, key=lambda m: (m.id, str(m.image)))


def check_frames(metas) -> None:
    """Labels and records that parse but cannot make a frame of a panorama."""
    labelled = [m for m in metas if m.extra.get("format") != "PHOTO"]
    for m in labelled:
        if m.image is None or (m.extra.get("raw_layout") is None and not Path(m.image).is_file()):
            want = f" ({m.image})" if m.image else ""
            raise InputError(m.source, f"no image file beside this label{want}", field="image")
    for m in labelled:
        if m.model is None and m.extra.get("format") in ("JSON", "PDS4"):
            raise LabelError(m.source, f"missing (delete the record to stitch {Path(m.image).name} as a plain "
                                       "photo)", field="camera model")
    posed = [m for m in metas if m.model is not None]
    if posed and len(posed) < len(metas):
        bare = next(m for m in metas if m.model is None)
        raise InputError(bare.source, f"has no camera model, unlike {posed[0].source}: plain photos cannot be "
                                      "used together with rover frames")


def output_plan(records, config) -> dict | None:
    """The renderer's plan (size, tiles, bytes) of the panorama of ``records`` (ingest records)
    at their reported camera models; None when nothing is rendered or no frame has a model.
    Raises InputError when the panorama would exceed ``config.max_megapixels``."""
    posed = [r for r in records if r["model"] is not None]
    if not posed or not config.render:
        return None
    sol = {"frames": [{"id": r["id"], "image": r["image"], "width": r["width"], "height": r["height"],
                       "model": r["model"], "frame": "LOCAL_LEVEL", "used": True} for r in posed]}
    return render_plan(sol, **render_options(config))


def check_output_size(records, config) -> dict | None:
    """The panorama's size from the reported camera models (the plan ``--dry-run`` prints);
    InputError before any work when it exceeds ``config.max_megapixels``. None without models."""
    limit = config.max_megapixels * 1e6
    if config.render and records and all(r["model"] is None for r in records) and config.resolution \
            and config.projection in ("equirect", "cylindrical", "perspective"):
        # Plain photos: the size is known once their focal lengths are solved, but the panorama
        # holds at least its widest photo at the asked resolution.
        known = [(r["hfov"], r["width"], r["height"]) for r in records if r.get("hfov")]
        if known:
            hfov, w, h = max(known)
            px = (hfov / config.resolution) ** 2 * h / w
            if px > limit:
                raise InputError(None, f"a panorama at {config.resolution:g} deg per pixel holds more than "
                                       f"{px / 1e6:,.0f} megapixels (one {hfov:.1f} deg photo alone), over the "
                                       f"limit of {config.max_megapixels:g} (max_megapixels)", field="resolution")
        return None
    try:
        return output_plan(records, config)
    except InputError as e:
        if e.field != "resolution":
            raise
        # The renderer's words name its own parameter; the stitch option is max_megapixels.
        raise InputError(e.path, f"{e.problem.split(' (raise')[0]} gigapixels (max_megapixels = "
                                 f"{config.max_megapixels:g}); coarsen the resolution or raise max_megapixels",
                         field="resolution") from None


#: Without a features stage to feed (``mosaic terrain``'s check), pixels are proven at this scale:
#: a JPEG's whole entropy stream decodes at 1/8 size, and nothing is kept.
PROOF_SCALE = 0.125


def check_pixels(metas, config=None) -> int:
    """Decode every frame's pixels (``mosaic.formats.pixels.decode``) at the scale features reads them,
    on a few threads; InputError for the first frame, in order, that is not whole. The pixels of
    the frames a stage reads from the cache (``kept_for_stages``) stay there; returns how many."""
    from concurrent.futures import ThreadPoolExecutor

    options = config.key_of(*CONFIG_FIELDS) if config is not None else None

    def one(m):
        rec = {"image": m.image, "width": m.width, "height": m.height, "path": m.source,
               "model": None if m.model is None else True}
        if m.extra.get("raw_layout") is not None:
            return pixels.decode(m, 1.0)
        if options is None:
            return pixels.decode(rec, PROOF_SCALE, cache=None)
        _, scale, _ = scales(rec, options)
        keep = kept_for_stages(rec, scale)
        return pixels.decode(rec, scale, grey=keep, cache=pixels.CACHE if keep else None)

    before = len(pixels.CACHE)
    if not metas:
        return 0
    with ThreadPoolExecutor(max_workers=min(len(metas), usable_cpus(), 8), thread_name_prefix="check") as pool:
        results = pool.map(one, metas)
        try:
            for _ in results:
                pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return len(pixels.CACHE) - before


def kept_for_stages(record, scale: float) -> bool:
    """Whether a stage of this process reads the frame's checked pixels (decoded at ``scale``)
    from mosaic.formats.pixels.CACHE: today the features stage's JPEG photos decoded grey at a DCT
    reduction (the same bytes). The others are decoded, proven whole and dropped, until their
    readers take them too: keeping pixels nobody reads would only raise the run's peak memory
    (budapest's photos, which no reduction fits, held 5.5 MiB of unread full-size decodes through
    the features stage)."""
    return reads_reduced_jpeg(record) and pixels.jpeg_reduction(int(record["width"]), int(record["height"]), scale) > 1


def check(inputs, out, config=None) -> Checked:
    """Every check above, in order; returns what they found (see ``Checked``). Without a
    StitchConfig (``mosaic terrain``) the output size is not checked here, no pixels are kept, and
    finding no frames is left to the command (which names what it needed: stereo pairs)."""
    t0 = time.perf_counter()
    paths = resolve_inputs(inputs, out)
    metas = frames(paths, out, require=config is not None)
    check_frames(metas)
    t1 = time.perf_counter()
    if config is not None:
        check_output_size([frame_record(m, config.hfov) for m in metas], config)
    t2 = time.perf_counter()
    kept = check_pixels(metas, config)
    t3 = time.perf_counter()
    files = sorted({str(Path(p).resolve()) for m in metas for p in (m.source, m.image) if p is not None})
    seconds = {"labels": round(t1 - t0, 3), "size": round(t2 - t1, 3), "pixels": round(t3 - t2, 3)}
    log.debug("checked %d frames: %s", len(metas), seconds)
    return Checked(paths, metas, files, seconds, kept)
