"""The ``mosaic`` command: a thin layer over the stages.

Exit status: 0 success, 1 internal failure (with the log), 2 bad input (one line naming the file
and the problem), 130 interrupted.

Every command takes ``--config FILE.toml``: its ``[COMMAND]`` table (or, without one, the file's
top-level keys) supplies option values, named as the long flags without dashes (``gsd = 0.05``,
``site_origin = "18.4,77.5,-2570"``, ``no_web = true``; positional arguments by their name, e.g.
``inputs = ["frames/"]``, ``out = "site/"``); the command line wins over the file, and an unknown
key is an error naming the file and the key. ``--print-config`` prints the effective settings as
TOML and exits. ``stitch`` and ``terrain`` take ``--dry-run``: the plan (frames, pairs, output
size, estimated time and memory) without computing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import sys
from pathlib import Path

from calib.errors import InputError
from mosaic import plan
from mosaic.runtime import progress
from mosaic.runtime.atomic import OutputError
from mosaic.runtime.config import StitchConfig, read_toml

#: sub-command -> module holding ``add_arguments(parser)``, ``run(args)`` and a docstring whose
#: first line is the summary and whose rest (with an example) is the help text.
COMMANDS = {
    "info": "mosaic.info",
    "view": "mosaic.view",
    "synth": "mosaic.synth.cli",
    "eval": "mosaic.evaluate",
    "terrain": "mosaic.terrain.command",
    "stitch": "mosaic.stitch",
    "batch": "mosaic.batch",
}

#: Commands that can plan without computing (``--dry-run``).
PLANNED = ("stitch", "terrain")

log = logging.getLogger("mosaic")

#: Commands whose --config is the generic layer here (filled by build_parser).
GENERIC_CONFIG: set = set()

_INTERNAL_DESTS = {"help", "config", "print_config", "dry_run", "verbose", "quiet", "_run", "command"}


def _available():
    """(name, module) of the registered commands whose module is present (a command being
    added by another change may not exist yet in this checkout)."""
    for name, modname in COMMANDS.items():
        try:
            yield name, importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and {command: its sub-parser}."""
    p = argparse.ArgumentParser(
        prog="mosaic",
        description="Mars rover frames to seamless panoramas and georeferenced terrain.\n\n"
                    "Example:\n    mosaic stitch sample_tiles/navcam_360 -o out/navcam_360\n\n"
                    "Run `mosaic COMMAND --help` for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug log output (-vv: dask's too)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors (no progress)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    for name, mod in _available():
        doc = (mod.__doc__ or "").strip()
        summary = doc.partition("\n")[0]
        sp = sub.add_parser(name, help=summary, description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        # The same switches after the command name (`mosaic stitch ... -v`); SUPPRESS keeps the
        # top-level value when they are not repeated here.
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if not any("--config" in a.option_strings for a in sp._actions):
            # Commands without a --config of their own get the generic one (apply_config).
            sp.add_argument("--config", metavar="TOML",
                            help=f"option values from a TOML file ([{name}] table); flags override it")
            GENERIC_CONFIG.add(name)
        sp.add_argument("--print-config", action="store_true", help="print the effective settings as TOML and exit")
        if name in PLANNED:
            sp.add_argument("--dry-run", action="store_true",
                            help="print the plan (frames, pairs, output size, estimated time and memory) and exit")
        sp.set_defaults(_run=mod.run)
        subs[name] = sp
    return p, subs


# -- configuration files -------------------------------------------------------------------------

def _scan(argv, names):
    """(command, --config value) from raw argv, before parsing (the file decides the defaults)."""
    command = config = None
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if command is None and a in names:
            command = a
        elif command is not None and a == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
        elif command is not None and a.startswith("--config="):
            config = a.split("=", 1)[1]
    return command, config


def load_table(path, command: str) -> dict:
    """The ``[command]`` table of a TOML file, else its top-level keys that are not tables of
    other commands."""
    path = Path(path)
    data = read_toml(path)
    if isinstance(data.get(command), dict):
        return data[command]
    return {k: v for k, v in data.items() if not (k in COMMANDS and isinstance(v, dict))}


def _coerce(action, value, path, key):
    """A TOML value as argparse would have produced it from the command line."""
    if action.nargs == 0:  # store_true / store_false / count
        if not isinstance(value, bool):
            raise InputError(path, f"{key} must be true or false, got {value!r}", field=key)
        return value if action.const is not False else not value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    vals = value if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise InputError(path, f"{key} takes one value, got a list", field=key)
    out = []
    for v in vals:
        if action.type is not None and not isinstance(v, bool):
            try:
                v = action.type(v) if not isinstance(v, str) or action.type is not str else v
            except (TypeError, ValueError) as e:
                raise InputError(path, f"{key}: {e}", field=key) from None
        if action.choices is not None and v not in action.choices:
            raise InputError(path, f"{key} = {v!r} is not one of {', '.join(map(str, action.choices))}", field=key)
        out.append(v)
    return out if many else out[0]


def apply_config(sp: argparse.ArgumentParser, command: str, path) -> dict:
    """Make the file's values ``sp``'s defaults (the command line, parsed afterwards, wins);
    returns them. (``stitch`` reads its file itself, into a typed StitchConfig.)"""
    table = load_table(path, command)
    actions = {a.dest: a for a in sp._actions if a.dest not in _INTERNAL_DESTS}
    values = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise InputError(path, f"unknown option {key!r} for mosaic {command}", field=key)
        values[dest] = _coerce(action, value, path, key)
        # A value from the file satisfies a required argument.
        action.required = False
        if not action.option_strings and action.nargs == "+":
            action.nargs = "*"
    sp.set_defaults(**values)
    return values


# -- printing the effective configuration --------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def to_toml(command: str, values: dict) -> str:
    """A ``[command]`` table; None values (TOML has no null) are listed as comments."""
    lines = [f"[{command}]"]
    for k, v in values.items():
        lines.append(f"# {k} = (not set)" if v is None else f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def stitch_config(args):
    """The StitchConfig that ``mosaic stitch`` would run with (file, then flags), as stitch.run
    builds it."""
    flags = {f: getattr(args, f) for f in StitchConfig.__dataclass_fields__ if hasattr(args, f)}
    flags["render"] = False if getattr(args, "no_render", False) else None
    if getattr(args, "config", None):
        return StitchConfig.from_toml(args.config, **flags)
    return StitchConfig.from_mapping({k: v for k, v in flags.items() if v is not None})


def effective(args, sp) -> dict:
    """The command's option values after the file and the flags (for --print-config)."""
    return {a.dest: getattr(args, a.dest) for a in sp._actions
            if a.dest not in _INTERNAL_DESTS and a.dest != argparse.SUPPRESS and hasattr(args, a.dest)}


def print_config(args, sp) -> None:
    if args.command == "stitch":
        import dataclasses

        # StitchConfig's fields only: the output is a valid --config file for stitch.
        print(to_toml("stitch", dataclasses.asdict(stitch_config(args))), end="")
    else:
        print(to_toml(args.command, effective(args, sp)), end="")


def dry_run(args) -> None:
    if args.command == "stitch":
        p = plan.stitch_plan(args.inputs, stitch_config(args), out=args.out)
    else:
        p = plan.terrain_plan(args.inputs, gsd=args.gsd, radius=args.radius, site_origin=args.site_origin,
                              solution=args.solution, workers=getattr(args, "workers", None),
                              threads_per_worker=getattr(args, "threads_per_worker", None),
                              scheduler=args.scheduler)
    if getattr(args, "json", False):
        print(json.dumps(p, indent=1, default=str))
    else:
        print(plan.format_plan(p))


# -- main ------------------------------------------------------------------------------------------

def _logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.INFO if verbose == 0 else logging.DEBUG)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    root.setLevel(level)
    log.setLevel(level)
    # dask's scheduler and workers log every start and connection at INFO, and a failed task as
    # "Compute Failed" with its traceback, then the cancelled ones, at WARNING and ERROR (through
    # their own stderr handler): a run that fails says so in one line of ours instead. Shown with -vv.
    for h in root.handlers:
        for f in [f for f in h.filters if isinstance(f, _DaskChatter)]:
            h.removeFilter(f)
        if verbose < 2:
            h.addFilter(_DaskChatter())
    if verbose < 2:
        import warnings

        # GDAL reads our untransformed tile parts and says so once per file.
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")
        # distributed sets its loggers up when imported: before that through dask's config, after it directly.
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "critical"
        if "distributed" in sys.modules:
            logging.getLogger("distributed").setLevel(logging.CRITICAL)
        elif "dask" in sys.modules:
            sys.modules["dask"].config.set({"logging.distributed": "critical"})
    progress.set_quiet(quiet)


class _DaskChatter(logging.Filter):
    """Drops the records of dask's, its event loop's and GDAL's (rasterio) loggers below CRITICAL."""

    NAMES = ("distributed", "tornado", "asyncio", "bokeh", "rasterio")

    def filter(self, record):
        return record.levelno >= logging.CRITICAL or not record.name.startswith(self.NAMES)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subs = build_parser()
    command = None
    try:
        command, config = _scan(argv, subs)
        if command in GENERIC_CONFIG and config:
            apply_config(subs[command], command, config)
        args = parser.parse_args(argv)
    except InputError as e:
        print(f"mosaic {command or ''}: error: {e}".replace("  ", " "), file=sys.stderr)
        return 2
    _logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        if args.print_config:
            print_config(args, subs[args.command])
            return 0
        if getattr(args, "dry_run", False):
            dry_run(args)
            return 0
        with _c_library_noise_filtered(getattr(args, "verbose", 0) == 0):
            rc = args._run(args)
        return int(rc or 0)
    except InputError as e:
        print(f"mosaic {args.command}: error: {_input_line(e)}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"mosaic {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mosaic: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"mosaic {args.command}: internal error: {_one_line(e)} ({_traceback_note(args)})", file=sys.stderr)
        return 1


#: Lines that C libraries print on the process's stderr by themselves (libtiff's "_tiffWriteProc:
#: No space left on device." per failed strip, libjpeg's "Premature end of JPEG file", libpng's and
#: GDAL's and OpenCV's messages): the error they lead to reaches the user as one line of ours.
_C_NOISE = re.compile(rb"^(_?tiff\w*|TIFF\w*|libpng (error|warning)|(ERROR|Warning) \d+|\[ ?(WARN|ERROR|INFO):\d+@"
                      rb"|Premature end of JPEG file|Corrupt JPEG data|Invalid SOS parameters|Bogus marker length"
                      rb"|Not a JPEG file|JPEG datastream contains no image|Warning: unknown JFIF revision)")


@contextlib.contextmanager
def _c_library_noise_filtered(active: bool = True):
    """Route the process's stderr (fd 2, where C libraries write) through a filter that drops
    _C_NOISE lines, for the block. Python's own writes go straight to the terminal through a new
    ``sys.stderr`` on a copy of the old fd, so progress bars still see a terminal. Not done under
    a test runner's capture (no real fd 2 behind sys.stderr) or with -v."""
    import threading

    try:
        real = active and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    old_stderr = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, closefd=False, encoding=old_stderr.encoding,
                      errors=old_stderr.errors)
    for h in logging.getLogger().handlers:
        if getattr(h, "stream", None) is old_stderr:
            h.setStream(sys.stderr)

    def pump():
        with open(r, "rb", closefd=True) as src:
            for line in src:
                if not _C_NOISE.match(line):
                    os.write(saved, line)

    t = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    t.start()
    try:
        yield
    finally:
        os.dup2(saved, 2)  # closes the pipe's last writer here: the pump reads to its end
        t.join(timeout=5)
        sys.stderr.flush()
        for h in logging.getLogger().handlers:
            if getattr(h, "stream", None) is sys.stderr:
                h.setStream(old_stderr)
        sys.stderr = old_stderr
        os.close(saved)


def _input_line(e: InputError) -> str:
    """The error's line; one that names no file (a command-line value) starts with its field."""
    if e.path is None:
        return f"{e.field}: {e.problem}" if e.field else e.problem
    return str(e)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _traceback_note(args) -> str:
    """Where the traceback of an internal error went: the debug log (-v), else a file."""
    import tempfile
    import traceback

    if log.isEnabledFor(logging.DEBUG):
        log.debug("mosaic %s: internal error", args.command, exc_info=True)
        return "traceback above"
    try:
        fd, path = tempfile.mkstemp(prefix=f"mosaic-{args.command}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(f"mosaic {' '.join(sys.argv[1:])}\n\n")
            f.write(traceback.format_exc())
    except OSError:
        return "run again with -v for the traceback"
    return f"traceback in {path}; please report it"


if __name__ == "__main__":
    sys.exit(main())
