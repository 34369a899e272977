"""Features: keypoints and descriptors per frame, one dask task each, saved as ``features/<id>.npz``.

Detection runs on an 8-bit grey copy at a working resolution (``work_megapixels``): 12-bit and
16-bit data are stretched between percentiles first (a plain cast would leave Mars frames nearly
black), and the frame is area-downsampled. Keypoints are stored in the pixels of the frame as
delivered. Masked: a border band (``border_px`` beyond the frame's own dark or odd border rows and
columns, :func:`mosaic.render.masks.detect_margins`, the renderer's valid-pixel margins), and
invalid pixels (zero fill of subframes and telemetry rows, an alpha band).
Keypoints are put in a canonical order (response, then position) and OpenCV runs single-threaded
inside a task, so the same frame gives the same bytes on any cluster.
"""

from __future__ import annotations

import io

import numpy as np

from calib.labels import read_frame, read_image
from mosaic.formats.pixels import CACHE
from mosaic.formats.workspace import Workspace, digest, resumable
from mosaic.pipeline.stages import code_key, upstream_key
from mosaic.render.masks import detect_margins
from mosaic.runtime.atomic import write_bytes
from mosaic.runtime.memory import trim_freed

CONFIG_FIELDS = ("feature", "work_megapixels", "min_scale", "refine_scale", "photo_megapixels", "photo_keypoints",
                 "max_keypoints", "border_px", "stretch_percentiles")


def to_gray8(arr: np.ndarray, percentiles=(0.5, 99.5)) -> tuple[np.ndarray, np.ndarray]:
    """8-bit grey image and validity mask (True = usable) of a frame's pixels.

    Every bit depth is stretched linearly between the percentiles of its valid (non-zero) pixels:
    Mars frames fill a narrow band of values, and SIFT's contrast threshold is absolute.
    """
    a = np.asarray(arr)
    if a.ndim == 3:
        bands = a[:, :, :3].astype(np.float32)
        valid = np.any(a[:, :, :3] != 0, axis=2)
        if a.shape[2] == 4:
            valid &= a[:, :, 3] != 0
        g = bands @ np.array([0.299, 0.587, 0.114], np.float32) if bands.shape[2] == 3 else bands[:, :, 0]
    else:
        g = a.astype(np.float32)
        valid = a != 0
    vals = g[valid] if valid.any() else g.ravel()
    lo, hi = np.percentile(vals[:: max(1, vals.size // 200000)], percentiles)
    hi = max(hi, lo + 1e-6)
    out = np.clip((g - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    return out, valid


def working_scale(width: int, height: int, megapixels: float, min_scale: float = 0.0) -> float:
    """Downscale factor to about ``megapixels``, but not below ``min_scale`` (nor above 1)."""
    return min(1.0, max(min_scale, float(np.sqrt(megapixels * 1e6 / (width * height)))))


def keypoint_centres(pt: np.ndarray, kind: str) -> np.ndarray:
    """Keypoint coordinates in the pixel-centre convention of the image they were found in.

    OpenCV's SIFT finds keypoints on a 2x linear upsampling and halves their coordinates without
    the half-pixel term, so they sit +0.25 px off in x and y (measured on rendered blobs: +0.251,
    +0.243). Uncorrected, that is a pitch bias common to every frame of a pan, which no gauge
    removes.
    """
    return pt - 0.25 if kind == "sift" else pt


def _detector(kind: str, n: int):
    import cv2

    if kind == "sift":
        # Mars regolith is low in contrast even after the stretch: a lower threshold than
        # OpenCV's 0.04 finds several times more (still repeatable) keypoints.
        return cv2.SIFT_create(nfeatures=n, contrastThreshold=0.01)
    if kind == "orb":
        return cv2.ORB_create(nfeatures=n, edgeThreshold=15, patchSize=15)
    # OpenCV 5 moved AKAZE to the contrib module xfeatures2d.
    create = getattr(cv2, "AKAZE_create", None) or cv2.xfeatures2d.AKAZE_create
    return create(threshold=5e-4)


def scales(record: dict, options: dict) -> tuple[float, float, bool]:
    """(detection scale, decode scale, refined) of a frame: the scale its pixels are read at is
    the larger of the two (``mosaic.formats.pixels`` checks and keeps them at that scale)."""
    w, h = int(record["width"]), int(record["height"])
    refine = record.get("model") is None and options["refine_scale"] > 0
    # Refined photos: detection only has to find and match keypoints (no precision floor);
    # the precision comes from the patches at ``rs``.
    s = (working_scale(w, h, options["photo_megapixels"]) if refine else
         working_scale(w, h, options["work_megapixels"], options["min_scale"]))
    rs = max(float(options["refine_scale"]), s) if refine else s
    return s, rs, refine


def reads_reduced_jpeg(record: dict) -> bool:
    """Whether features decodes this frame grey at a DCT reduction (a JPEG plain photo)."""
    return record.get("model") is None and str(record["image"]).lower().endswith((".jpg", ".jpeg"))


def detect(record: dict, out_path: str, options: dict) -> dict:
    """One frame's features (a dask task: carries a path in, writes a path out)."""
    import cv2

    cv2.setNumThreads(1)
    w, h = int(record["width"]), int(record["height"])
    s, rs, refine = scales(record, options)
    arr, r = frame_pixels(record, rs)
    # The frame's own border (dark rows, dim columns), in pixels as delivered.
    margins = detect_margins(arr[..., :3] if arr.ndim == 3 and arr.shape[2] == 4 else arr,
                             arr[..., 3] if arr.ndim == 3 and arr.shape[2] == 4 else None).scaled(r)
    gray, valid = to_gray8(arr, options["stretch_percentiles"])
    rw = gray.shape[1]
    fine = None
    if refine:
        fine = gray
        if rs * r < 1.0:
            fine = cv2.resize(gray, (max(1, round(w * rs)), max(1, round(h * rs))), interpolation=cv2.INTER_AREA)
    if s * r < 1.0:
        size = (max(1, round(w * s)), max(1, round(h * s)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        valid = cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    # Pixel centres: delivered x = (x_work + 0.5) / sx - 0.5 through the decode reduction too.
    sx = gray.shape[1] / (r * rw)
    sy = gray.shape[0] / (r * arr.shape[0])
    mask = valid.astype(np.uint8) * 255
    # Invalid areas grow by a descriptor's reach so no keypoint straddles a fill edge.
    mask = cv2.erode(mask, np.ones((7, 7), np.uint8))
    bt, bb, bl, br = (max(1, int(np.ceil((options["border_px"] + m) * s))) for m in margins.as_list())
    mask[:bt], mask[-bb:], mask[:, :bl], mask[:, -br:] = 0, 0, 0, 0
    keep = options["photo_keypoints"] if refine else options["max_keypoints"]
    det = _detector(options["feature"], keep)
    kps, desc = det.detectAndCompute(gray, mask)
    n = len(kps)
    if n == 0 or desc is None:
        xy = np.zeros((0, 2))
        resp = np.zeros(0, np.float32)
        size_ = np.zeros(0, np.float32)
        desc = np.zeros((0, 128 if options["feature"] == "sift" else 32), np.uint8 if options["feature"] != "sift" else np.float32)
    else:
        pt = np.array([k.pt for k in kps], float)
        resp = np.array([k.response for k in kps], np.float32)
        size_ = np.array([k.size for k in kps], np.float32)
        pt = keypoint_centres(pt, options["feature"])
        order = np.lexsort((pt[:, 0], pt[:, 1], -resp))[:keep]
        pt, resp, size_, desc = pt[order], resp[order], size_[order], desc[order]
        # Working-resolution pixel centres -> delivered-frame pixel centres.
        xy = np.stack([(pt[:, 0] + 0.5) / sx - 0.5, (pt[:, 1] + 0.5) / sy - 0.5], axis=1)
    extra = {}
    if fine is not None:
        fs = np.array([fine.shape[1] / (r * rw), fine.shape[0] / (r * arr.shape[0])])
        extra = {"patches": sample_patches(fine, (xy + 0.5) * fs - 0.5, PATCH_RADIUS), "patch_scale": fs}
    buf = io.BytesIO()
    np.savez(buf, xy=xy, response=resp, size=size_ / sx, descriptors=desc,
             scale=np.array([sx, sy]), shape=np.array([h, w]), **extra)
    write_bytes(out_path, buf.getvalue())
    return {"id": record["id"], "keypoints": int(len(xy)), "scale": float(sx)}


#: Half-size of the patches kept around each keypoint of a refined photo (pixels at refine_scale).
PATCH_RADIUS = 7


def sample_patches(image: np.ndarray, centres: np.ndarray, radius: int) -> np.ndarray:
    """(N, 2r+1, 2r+1) uint8 patches of ``image`` centred on sub-pixel ``centres`` (pixel-centre
    convention), bilinear, edges replicated: one remap call for all of them."""
    import cv2

    n, k = len(centres), 2 * radius + 1
    if n == 0:
        return np.zeros((0, k, k), np.uint8)
    off = np.arange(-radius, radius + 1, dtype=np.float32)
    mx = (centres[:, 0, None, None] + off[None, None, :]).astype(np.float32).repeat(k, axis=1)
    my = (centres[:, 1, None, None] + off[None, :, None]).astype(np.float32).repeat(k, axis=2)
    out = cv2.remap(image, mx.reshape(n, k * k), my.reshape(n, k * k), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(n, k, k)


def frame_pixels(record: dict, scale: float) -> tuple[np.ndarray, int]:
    """A frame's pixels for work at ``scale`` of its size: (array, r), the frame reduced by the
    integer factor r. JPEG photos decode at 1/2, 1/4 or 1/8 (grey) where ``scale`` allows, every
    other frame at full size (r = 1). The stage reads pixels only here: a cache of decoded frames
    (the input validation's) feeds it by answering this call."""
    arr, r = _decode_reduced(record, scale)
    if arr is None:
        arr, r = read_image(read_frame(record["path"])), 1
    return arr, r


def _decode_reduced(record: dict, scale: float):
    """A JPEG photo decoded at 1/2, 1/4 or 1/8 size straight from its DCT (several times faster
    than a full decode) when the working scale allows; (None, 1) otherwise."""
    import cv2

    path = record["image"]
    if not reads_reduced_jpeg(record):
        return None, 1
    hit = CACHE.get(path, scale, grey=True)  # decoded by the check before the run (same bytes)
    if hit is not None and hit.reduction > 1:
        return hit.pixels, int(hit.reduction)
    for r, flag in ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                    (2, cv2.IMREAD_REDUCED_GRAYSCALE_2)):
        if scale * r <= 1.0 and record["width"] % r == 0 and record["height"] % r == 0:
            arr = cv2.imread(str(path), flag)
            return (arr, r) if arr is not None else (None, 1)
    return None, 1


def load(ws: Workspace, frame_id: str) -> dict:
    return ws.load_arrays("features", f"{frame_id}.npz")


def run(ws: Workspace, config, client) -> dict:
    frames = ws.read_json("ingest", "frames.json")["frames"]
    options = config.key_of(*CONFIG_FIELDS)
    key = digest("features", code_key(__name__), code_key("mosaic.render.masks"), upstream_key(ws, "ingest"), options)
    if ws.stage_done("features", key):
        return ws.stage_report("features")
    # Per-frame records: a killed run's finished frames are not detected again.
    results, resumed = resumable(ws, client, "features", key, [
        (rec["id"], detect, (rec, str(ws.path("features", f"{rec['id']}.npz")), options)) for rec in frames])
    # The tasks' decodes and SIFT pyramids were freed into per-thread malloc arenas; on the local
    # executor they would stay resident through the render (boat: see docs/benchmarks.md).
    trim_freed()
    counts = [r["keypoints"] for r in results]
    report = {"frames": len(results), "keypoints": int(sum(counts)),
              "keypoints_min": int(min(counts)) if counts else 0,
              "keypoints_max": int(max(counts)) if counts else 0,
              "working_scale": {r["id"]: r["scale"] for r in results}, "resumed": resumed}
    ws.mark_done("features", key, report)
    return report
