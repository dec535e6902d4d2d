"""The one pattern of the project's three commands (``edge``, ``tools``, ``trainer``).

Each CLI builds a :class:`Parser` (``--version``, ``--log-level``), gives every subcommand a
function with ``set_defaults(func=...)``, and hands both to :func:`main`. Whatever a user can get
wrong, a flag, a file, a value, ends as one line ``PROG: error: ...`` and exit status 2, never a
traceback and never a usage dump: argparse's own errors included. The argument types below check
values at the door (finite numbers, names that cannot become paths or MQTT wildcards, output files
whose folder exists), so a mistake is refused before any work starts.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, NoReturn

from edge import __version__
from edge.errors import UserError
from edge.protocol.topics import NAME

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (subcommand parsers inherit this class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)\n")


def plain(text: str) -> str:
    """A docstring as a terminal shows it: reStructuredText's ``literals`` and :role:`targets` as plain words."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "")


def make_parser(prog: str, description: str, epilog: str | None = None) -> tuple[Parser, argparse._SubParsersAction]:
    """The top-level parser with ``--version`` and ``--log-level``, and its subcommands; ``description`` may be
    the module's docstring (shown as plain text)."""
    parser = Parser(prog=prog, description=plain(description), epilog=epilog,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="log detail (default: info, or the config's log_level)")
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def main(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None = None,
         prepare: Callable[[argparse.Namespace], None] | None = None) -> int:
    """Parse, set up logging, run the subcommand's function; every :class:`UserError` is one line and status 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=(args.log_level or "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if prepare:
            prepare(args)
        return args.func(args) or 0
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _number(text: str, kind: type, low: float, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value) or value < low or (low == 0 and kind is float and value == 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (``nan``, ``inf`` and negatives refused)."""
    return _number(text, float, 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text, float, -math.inf, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    return _number(text, int, 0, "a whole number >= 0")


def name(text: str) -> str:
    """A device id, group, key or bundle name: one level of letters, digits, ``.``, ``_``, ``-`` (no paths, no wildcards)."""
    if not NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a name: use 1-64 letters, digits, '.', '_', '-' "
                                         "(no '/', '+', '#', spaces or empty names)")
    return text


def output_file(text: str) -> Path:
    """A file to write: its folder must exist, it must not be a folder itself and it must be writable (checked before
    the work, not after)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {path.parent} does not exist")
    existed = path.exists()
    try:  # opening is the only test of writability that holds for root and read-only file systems; non-blocking,
        # so a FIFO with no reader is refused (ENXIO) instead of hanging here
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {exc.strerror}") from None
    if not existed:
        path.unlink()
    return path
