"""UserError: a problem with the user's input, printed by every script as one line with exit status 2.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""
