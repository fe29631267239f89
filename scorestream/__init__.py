"""scorestream: live audio-to-sheet-music identification and score following."""

from __future__ import annotations


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("scorestream")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


__version__ = _version()
