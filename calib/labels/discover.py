"""Which files make a frame: images paired with their sidecar labels, and directories walked.

A frame on disk (contract, DESIGN.md "Files") is an image (``.png``, ``.jpg``, ``.tif``) plus a
sidecar with the same stem (``X.json``, ``X-metadata.json`` or ``X.xml``), or a PDS3/VICAR
``.IMG`` with an attached label, or a PDS4 ``.xml`` label (whose pixel file may be absent), or a
plain photo with no sidecar. Each frame is read once, whichever of its files are named.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import InputError, LabelError
from ..meta import FrameMeta
from .json_record import load_record, looks_like_record, read_json_frame
from .pds4 import is_pds4, read_pds4_frame
from .raster import IMAGE_SUFFIXES, RAW_SUFFIXES, frame_pixels, image_header
from .vicar import is_pds3, is_vicar, read_vicar_frame

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(rb"<(?:\w+:)?file_name>\s*([^<]+?)\s*</(?:\w+:)?file_name>")


def _suffix(p: Path) -> str:
    return p.suffix.lower()


def _head(path, n=4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None


def _same_stem(directory: Path, stem: str, suffixes) -> Path | None:
    """A file ``stem + suffix`` in ``directory`` (suffix compared case-insensitively)."""
    for s in suffixes:
        for cand in (directory / (stem + s), directory / (stem + s.upper())):
            if cand.is_file():
                return cand
    return None


class _Pairing:
    """Pairs files of one directory: which label goes with which image."""

    def __init__(self, directory: Path):
        self.dir = directory
        self._claims = None
        self._files = None

    def files(self) -> dict:
        """file name (lower case) -> path, for the files of this directory."""
        if self._files is None:
            self._files = {c.name.lower(): c for c in sorted(self.dir.iterdir()) if c.is_file()}
        return self._files

    def pds4_claims(self) -> dict:
        """image file name (lower case) -> the PDS4 label in this directory that names it."""
        if self._claims is None:
            self._claims = {}
            for x in sorted(self.dir.glob("*")):
                if _suffix(x) != ".xml" or not x.is_file():
                    continue
                head = _head(x, 1 << 20)
                if not is_pds4(head[:65536]):
                    continue
                for m in _FILE_NAME.finditer(head):
                    name = os.path.basename(m.group(1).decode("latin-1")).lower()
                    self._claims.setdefault(name, x)
        return self._claims

    def resolve(self, p: Path):
        """(label or None, image or None, kind) of the frame the file ``p`` belongs to."""
        s = _suffix(p)
        if s == ".json":
            stem = p.stem.removesuffix("-metadata")
            return p, _same_stem(self.dir, stem, IMAGE_SUFFIXES), "json"
        if s == ".xml":
            files = self.files()
            named = sorted(n for n, label in self.pds4_claims().items() if label == p and n in files)
            image = files[named[0]] if named else None
            return p, image or _same_stem(self.dir, p.stem, IMAGE_SUFFIXES), "pds4"
        if s in RAW_SUFFIXES:
            # A raw product carries its own label, unless a PDS4 label names it as its data file.
            claim = self.pds4_claims().get(p.name.lower())
            return (claim, p, "pds4") if claim is not None else (p, p, "pds3")
        if s in IMAGE_SUFFIXES:
            for stem in (p.stem, p.stem + "-metadata"):
                cand = _same_stem(self.dir, stem, (".json",))
                if cand is not None:
                    return cand, p, "json"
            claim = self.pds4_claims().get(p.name.lower())
            xml = claim or _same_stem(self.dir, p.stem, (".xml",))
            if xml is not None:
                return xml, p, "pds4"
            return None, p, "photo"
        raise InputError(p, f"unsupported file type {p.suffix or '(none)'!r}")


def read_photo(image) -> FrameMeta:
    """A plain photo: size, bands and depth from its header, no camera model."""
    image = os.fspath(image)
    w, h, bands, depth = image_header(image)
    return FrameMeta(
        id=Path(image).stem, instrument="PHOTO", width=w, height=h, model=None,
        source=image, image=image, bands=bands, bit_depth=depth, extra={"format": "PHOTO"},
    )


def _read(label, image, kind) -> FrameMeta:
    if kind == "json":
        return read_json_frame(label, image)
    if kind == "pds4":
        return read_pds4_frame(label, image)
    if kind == "pds3":
        head = _head(label)
        if not (is_pds3(head) or is_vicar(head)):
            raise LabelError(label, "neither a PDS3 product (PDS_VERSION_ID) nor a VICAR file (LBLSIZE)", field="label")
        return read_vicar_frame(label)
    return read_photo(image)


def read_image(meta):
    """Pixels of a frame: (lines, samples) or (lines, samples, bands), RGB, the file's dtype.

    ``meta`` is a FrameMeta (its ``image`` and, for raw products, ``extra["raw_layout"]``) or a
    path (the frame it belongs to, :func:`read_frame`). The array's size must match the frame's
    width and height.
    """
    return frame_pixels(meta if isinstance(meta, FrameMeta) else read_frame(meta))


def read_frame(path) -> FrameMeta:
    """The frame a file belongs to; ``path`` is an image, an ``.IMG`` or a sidecar label."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise InputError(p, "no such file")
    if p.is_dir():
        raise InputError(p, "is a directory (use discover)")
    label, image, kind = _Pairing(p.parent).resolve(p)
    return _read(label, image, kind)


def _candidates(directory: Path, recursive: bool, exclude=frozenset()):
    """Files under ``directory`` that may belong to a frame, sorted, hidden ones and the folders
    in ``exclude`` (real paths) skipped."""
    walker = os.walk(directory) if recursive else [(str(directory), [], os.listdir(directory))]
    for root, dirs, files in walker:
        # A synthetic scene's truth/ (beside its scene.json, see mosaic synth) holds answers, not frames.
        synth = os.path.isfile(os.path.join(root, "scene.json"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (synth and d == "truth")
                         and os.path.realpath(os.path.join(root, d)) not in exclude)
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = Path(root) / name
            s = _suffix(p)
            if s in IMAGE_SUFFIXES or s in RAW_SUFFIXES:
                yield p
            elif s == ".json":
                # A directory may hold other JSON (solutions, reports, STAC items): only records count.
                if name.endswith("-metadata.json"):
                    yield p
                else:
                    try:
                        rec = load_record(p)
                    except LabelError:
                        log.debug("skipping %s: not a JSON record", p)
                        continue
                    if looks_like_record(rec):
                        yield p
            elif s == ".xml" and is_pds4(_head(p, 65536)):
                yield p


def discover(paths, recursive: bool = True, exclude=()) -> list[FrameMeta]:
    """Every frame under ``paths`` (files or directories), each once, sorted by file path.

    ``exclude``: folders whose contents are never frames (a run's own output folder, which may
    sit inside its input folder). Raises InputError for a path that does not exist, LabelError
    for a frame that cannot be read and for two frames with the same id.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    exclude = frozenset(os.path.realpath(e) for e in exclude)
    files: list[Path] = []
    for path in paths:
        p = Path(os.fspath(path))
        if p.is_dir():
            files.extend(_candidates(p, recursive, exclude))
        elif p.exists():
            files.append(p)
        else:
            raise InputError(p, "no such file or directory")
    pairings: dict[Path, _Pairing] = {}
    frames: dict[tuple, tuple] = {}
    for f in files:
        d = f.parent.resolve()
        pairing = pairings.setdefault(d, _Pairing(f.parent))
        label, image, kind = pairing.resolve(f)
        key = (str(label.resolve()) if label else None, str(image.resolve()) if image else None)
        frames.setdefault(key, (label, image, kind))
    by_image: dict[str, Path] = {}
    for (lkey, ikey), (label, image, kind) in frames.items():
        if ikey is not None and ikey in by_image and by_image[ikey] != label:
            raise LabelError(image, f"two labels describe this image: {by_image[ikey]} and {label}", field="sidecar")
        if ikey is not None:
            by_image[ikey] = label
    metas = [_read(*v) for _, v in sorted(frames.items(), key=lambda kv: str(kv[1][1] or kv[1][0]))]
    seen: dict[str, FrameMeta] = {}
    for m in metas:
        if m.id in seen:
            raise LabelError(m.source, f"duplicate frame id {m.id!r} (also in {seen[m.id].source})", field="id")
        seen[m.id] = m
    return metas
