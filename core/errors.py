"""Errors meant for users.

Library code raises these (or ``ValueError``/``FileNotFoundError`` with a message
written for a user); the command line prints them as one line, never a traceback.
A message names the file or value at fault and says what to do.
"""

from __future__ import annotations


class ScoreStreamError(Exception):
    """Base of the errors whose message is shown to the user as it is."""


class InputError(ScoreStreamError, ValueError):
    """Bad input (a file, an option value): the message says which and what to do."""


class IncompatibleModelError(ScoreStreamError, ValueError):
    """Features, weights or a stored library that were made for another model input contract."""
