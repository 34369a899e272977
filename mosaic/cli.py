"""The ``mosaic`` command: a thin layer over the stages.

Exit status: 0 success, 1 internal failure (with the log), 2 bad input (one line naming the file
and the problem).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from calib.errors import InputError

from . import progress

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

log = logging.getLogger("mosaic")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mosaic",
        description="Mars rover frames to seamless panoramas and georeferenced terrain.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        doc = (mod.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n")
        sp = sub.add_parser(name, help=summary, description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.INFO if args.verbose == 0 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    progress.set_quiet(args.quiet)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        rc = args._run(args)
        return int(rc or 0)
    except InputError as e:
        print(f"mosaic {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mosaic: interrupted", file=sys.stderr)
        return 130
    except Exception:
        log.exception("mosaic %s: internal error", args.command)
        return 1


if __name__ == "__main__":
    sys.exit(main())
