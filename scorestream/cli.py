"""The ``scorestream`` command line.

Subcommands live in :mod:`scorestream.commands` and import their heavy
dependencies lazily, so that ``scorestream --help`` and the serving commands
work in a serving-only install.  Library code logs through :mod:`logging`; this
module decides what the user sees: INFO messages on stderr, and every error the
user can fix as one line (``scorestream: error: …``), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from scorestream import __version__
from scorestream.commands import GROUPS
from scorestream.core.errors import ScoreStreamError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scorestream", description="Live audio-to-sheet-music identification and score following.")
    ap.add_argument("--version", action="version", version=f"scorestream {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="more log messages (debug level)")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in GROUPS:
        try:
            mod = importlib.import_module(f"scorestream.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"scorestream.commands.{name}":
                continue          # a group not built yet
            raise
        mod.register(sub)
    return ap


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(asctime)s %(name)s: %(message)s"))
    root = logging.getLogger("scorestream")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    _setup_logging(a.verbose, a.quiet)
    try:
        return int(a.func(a) or 0)
    except ScoreStreamError as exc:
        print(f"scorestream: error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:      # unknown ids: the message is the first argument (no quotes)
        print(f"scorestream: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        print(f"scorestream: error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"scorestream: error: {exc}",
              file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:
        print(f"scorestream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scorestream: interrupted (a corpus build or library add resumes or rolls back cleanly)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
