"""Subcommands of the ``scorestream`` command line, one module per group.

Each module has ``register(subparsers)``; its handlers take the parsed
arguments and return an exit status.  Heavy dependencies are imported inside
the handlers, so ``scorestream --help`` and the serving commands work in a
serving-only install (no torch, no verovio, no fluidsynth).
"""

GROUPS = ("corpus", "eval", "library", "follow", "serve", "stream")
