"""Show a stitched panorama in the browser: serve OUT on localhost and open its viewer.

Serves the output folder of ``mosaic stitch`` over HTTP on 127.0.0.1 (nothing else can reach it)
and opens ``index.html``, writing the page first from ``preview.jpg`` when it is missing; with
``--tiles`` also a tile pyramid of ``panorama.tif``, which the served page loads as you zoom in.
Ctrl-C stops the server. The page also works straight from disk (file://) with the preview;
the tiles need the server, as browsers refuse file:// images as WebGL textures.

Example:
    mosaic view out                    # opens http://127.0.0.1:8765/index.html
    mosaic view out --port 0 --no-browser
    mosaic view out --az 120 --el -10 --fov 50
    mosaic view out --tiles            # zoom to full resolution (tiles from panorama.tif)
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import logging
import threading
import webbrowser
from pathlib import Path

from calib.errors import InputError
from mosaic.formats import solution
from mosaic.formats.viewer import write_viewer
from mosaic.formats.viewer.tiles import MANIFEST, write_tiles

log = logging.getLogger("mosaic")

DEFAULT_PORT = 8765


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from one folder; requests go to the debug log, not to stderr."""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("view: %s - %s", self.address_string(), format % args)

    def end_headers(self):
        # A re-stitched panorama must show up on reload.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()


@contextlib.contextmanager
def serving(directory, port: int = 0, host: str = "127.0.0.1"):
    """Serve ``directory`` in a background thread; yield the base URL (``http://host:port/``).

    ``port=0`` picks a free port. The server stops and its socket closes when the block ends.
    """
    handler = functools.partial(_Handler, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise InputError(None, f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mosaic-view", daemon=True)
    thread.start()
    try:
        h, p = server.server_address[:2]
        yield f"http://{h}:{p}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def view_url(base: str, az=None, el=None, fov=None) -> str:
    """The viewer's URL under ``base``, with the initial view in the hash where given."""
    parts = [f"{k}={v:g}" for k, v in (("az", az), ("el", el), ("fov", fov)) if v is not None]
    return base + "index.html" + ("#" + "&".join(parts) if parts else "")


def prepare(out_dir, tiles: bool = False) -> Path:
    """Check ``out_dir`` and make sure it holds ``index.html``; return the folder.

    ``tiles``: build (or reuse, when current) the tile pyramid from ``panorama.tif`` and rewrite
    the page to use it. Otherwise an existing page is kept as it is, and a missing one is written
    with the pyramid already there, if any.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(out, f"no such output folder (run `mosaic stitch -o {out}` first)")
    if tiles:
        manifest = write_tiles(out)
        if manifest is None:
            log.info("view: %s is no wider than the preview; no tiles needed", out / "panorama.tif")
    elif (out / "index.html").is_file():
        return out
    else:
        try:
            manifest = json.loads((out / "tiles" / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
    if not (out / "preview.jpg").is_file():
        raise InputError(out, "holds neither index.html nor preview.jpg (not a `mosaic stitch` output)")
    write_viewer(out, tiles=manifest, meta=_solution_meta(out))
    log.info("view: wrote %s", out / "index.html")
    return out


def _solution_meta(out: Path) -> dict:
    """A few facts for the page's corner from ``solution.json``, if it is there and readable."""
    try:
        return solution.summary(solution.load(out / "solution.json"))
    except (InputError, AttributeError, TypeError):
        return {}


def add_arguments(p):
    p.add_argument("out", metavar="OUT", help="output folder of `mosaic stitch` (holds index.html or preview.jpg)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p.add_argument("--tiles", action="store_true",
                   help="build (or refresh) a tile pyramid from OUT/panorama.tif for full-resolution zoom")
    p.add_argument("--az", type=float, help="initial heading, degrees clockwise from north")
    p.add_argument("--el", type=float, help="initial elevation, degrees up")
    p.add_argument("--fov", type=float, help="initial horizontal field of view, degrees (10-120)")


#: Text-mode browsers Python's webbrowser falls back to without a display: they would take over
#: this terminal, and the viewer needs WebGL.
_CONSOLE_BROWSERS = {"www-browser", "links", "elinks", "lynx", "w3m"}


def open_browser(url: str) -> bool:
    """Open ``url`` in a graphical browser; False when there is none to open (no display, say)."""
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if getattr(browser, "name", "") in _CONSOLE_BROWSERS:
        return False
    try:
        return bool(browser.open(url))
    except OSError:
        return False


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(None, f"--port {args.port}: not a port number (0-65535)")
    out = prepare(args.out, tiles=args.tiles)
    with serving(out, port=args.port) as base:
        url = view_url(base, args.az, args.el, args.fov)
        print(f"Serving {out} at {url}  (Ctrl-C stops)", flush=True)
        if not args.no_browser and not open_browser(url):
            port = base.rstrip("/").rsplit(":", 1)[1]
            print(f"view: could not open a browser here (no display?): open {url} in a browser on this "
                  f"machine, or from another one through ssh -L {port}:127.0.0.1:{port} THIS-HOST", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("view: stopped", flush=True)
    return 0
