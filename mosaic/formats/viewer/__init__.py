"""The panorama viewer page: one self-contained ``index.html`` beside the panorama.

The page (template ``mosaic/formats/viewer/index.html``) is raw WebGL with the preview JPEG embedded as a
``data:`` URI, so it opens from disk with no network: Chromium refuses ``file://`` images as WebGL
textures, and a data URI is same-origin everywhere. Where WebGL is missing it shows a message and
the flat preview.

Example::

    from mosaic.formats.viewer import write_viewer
    write_viewer("out", title="Sol 1002 Navcam", meta={"frames": 35, "rms px": 0.41})
    # with a tile pyramid for deep zoom when served by `mosaic view`:
    write_viewer("out", tiles=write_tiles("out"))   # from mosaic.formats.viewer.tiles
    # then open out/index.html#az=90&el=0&fov=60
"""

from __future__ import annotations

import base64
import html
import io
import json
from importlib import resources
from pathlib import Path

from calib.errors import InputError
from mosaic.runtime.atomic import write_text

#: The embedded image is at most this wide: 4096 × 2048 is 8 M texels, within every WebGL's texture
#: limit, and keeps the page at a few MB.
MAX_EMBED_WIDTH = 4096
#: JPEG quality when the preview has to be re-encoded (smaller, not a PNG, not an over-wide JPEG).
EMBED_QUALITY = 88


def _template() -> str:
    return resources.files(__package__).joinpath("index.html").read_text(encoding="utf-8")


def embed_image(path, max_width: int = MAX_EMBED_WIDTH) -> tuple[str, int, int]:
    """Return ``(data_uri, width, height)`` of the image at ``path``, at most ``max_width`` wide.

    A baseline JPEG that already fits is embedded byte for byte; anything else (wider, PNG, TIFF,
    16-bit) is converted to 8-bit RGB, downscaled with a Lanczos filter and re-encoded as JPEG.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "JPEG" and w <= max_width and im.mode in ("RGB", "L"):
                return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii"), w, h
            im.load()
            rgb = _to_rgb8(im)
    except FileNotFoundError:
        raise InputError(path, "no such preview image") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(path, f"not a readable image ({e})") from None
    if w > max_width:
        h = max(1, round(h * max_width / w))
        w = max_width
        rgb = rgb.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=EMBED_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), w, h


def _sphere_from_window(preview, panorama, max_width: int):
    """A cropped equirect panorama (a window of the full-sphere grid, e.g. of plain photos) placed
    on a black full sphere, so the viewer's one mapping holds; None when ``panorama`` is not such
    a window. The window's place comes from the panorama's transform (degrees, contract)."""
    from PIL import Image

    try:
        import rasterio

        with rasterio.open(panorama) as ds:
            t, pw, ph = ds.transform, ds.width, ds.height
    except Exception:  # noqa: BLE001 -- no readable panorama beside the preview: not a window
        return None
    if not (t.a > 0 and abs(t.a + t.e) < 1e-9 * t.a and t.b == 0 and t.d == 0):
        return None
    with Image.open(preview) as im:
        im.load()
        rgb = _to_rgb8(im)
    k = rgb.width / pw  # preview pixels per panorama pixel
    full = 360.0 / t.a * k
    k2 = min(1.0, max_width / full)
    cw = max(2, int(round(full * k2 / 2)) * 2)
    sub = rgb.resize((max(1, round(rgb.width * k2)), max(1, round(rgb.height * k2))), Image.Resampling.LANCZOS)
    x = int(round(t.c / 360.0 * cw)) % cw
    y = int(round((90.0 - t.f) / 180.0 * (cw // 2)))
    canvas = Image.new("RGB", (cw, cw // 2))
    for dx in (0, -cw):  # a window past 360 degrees wraps round to the left edge
        canvas.paste(sub, (x + dx, y))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=EMBED_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), cw, cw // 2


def _to_rgb8(im):
    """8-bit RGB; transparent (uncovered) pixels become black, as in ``preview.jpg``."""
    import numpy as np
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(np.nanmax(a)), 1.0)
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def render_page(config: dict, title: str) -> str:
    """The viewer page for ``config`` (the JSON object the page script reads)."""
    # "</" inside the JSON would end the <script> element early.
    blob = json.dumps(config, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    return _template().replace("{{TITLE}}", html.escape(title)).replace("{{CONFIG}}", blob)


def write_viewer(out_dir, preview_name: str = "preview.jpg", tiles: dict | None = None,
                 title: str | None = None, meta: dict | None = None,
                 max_width: int = MAX_EMBED_WIDTH) -> Path:
    """Write ``out_dir/index.html`` showing ``out_dir/preview_name``; return its path.

    ``tiles``: the manifest from ``mosaic.formats.viewer.tiles.write_tiles(out_dir)``; when the page is
    served over HTTP it then loads full-resolution tiles as the view zooms in (from disk it keeps
    to the preview, which browsers allow as a WebGL texture only when embedded).
    ``meta`` is shown as a small key/value list under the title (values are turned into text).
    The page is written atomically and needs nothing beside it: the image is embedded, so it
    still works when copied elsewhere alone.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(out_dir, "not a directory")
    uri, w, h = embed_image(out_dir / preview_name, max_width=max_width)
    if w != 2 * h and abs(w - 2 * h) > 1:
        sphere = _sphere_from_window(out_dir / preview_name, out_dir / "panorama.tif", max_width)
        if sphere is None:
            raise InputError(out_dir / preview_name,
                             f"{w}x{h} is not an equirectangular full sphere (width = 2 x height)")
        uri, w, h = sphere
    config = {
        "title": title or out_dir.resolve().name,
        "meta": {str(k): str(v) for k, v in (meta or {}).items()},
        "preview": uri,
        "preview_file": preview_name,
        "width": w,
        "height": h,
        "tiles": None if tiles is None else {k: tiles[k] for k in ("url", "tile", "width", "height", "levels")},
    }
    path = write_text(out_dir / "index.html", render_page(config, config["title"]))
    return path
