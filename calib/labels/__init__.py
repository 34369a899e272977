"""Metadata readers: every supported label or record becomes one ``calib.meta.FrameMeta``.

- ``read_frame(path)``: the frame a file (image or sidecar) belongs to;
- ``discover(paths, recursive=True)``: every frame under files and directories, each once;
- ``read_image(meta)``: the frame's pixels (PNG/JPEG/TIFF or raw PDS3/PDS4 arrays);
- ``read_pixels(meta_or_path)``: the pixels of a PDS3 ``.IMG``.

Formats and fields: docs/formats.md. Every problem raises ``calib.errors.LabelError`` (or its
subclass ``ModelError``, or ``InputError`` for unreadable pixels) naming the file and the field.
"""

from .discover import discover, read_frame, read_image, read_photo
from .json_record import read_json_frame
from .pds4 import read_pds4_frame
from .raster import RawLayout, image_header, read_raw
from .vicar import read_pixels, read_vicar_frame

__all__ = [
    "RawLayout",
    "discover",
    "image_header",
    "read_frame",
    "read_image",
    "read_json_frame",
    "read_pds4_frame",
    "read_photo",
    "read_pixels",
    "read_raw",
    "read_vicar_frame",
]
