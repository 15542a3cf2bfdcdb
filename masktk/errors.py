"""What goes wrong with the user's input: UserError stops a script with one line and exit status 2; Log warns
about data that is skipped, naming the first few, and counts it all.
"""
from __future__ import annotations

import sys


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


class Log:
    """Collects warnings about skipped data: prints the first few, counts all."""

    def __init__(self, limit=20, quiet=False):
        self.limit, self.quiet, self.counts, self.shown = limit, quiet, {}, 0

    def warn(self, kind, msg):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if not self.quiet and self.shown < self.limit:
            print(f"warning: {msg}", file=sys.stderr)
            self.shown += 1

    def summary(self):
        if self.counts:
            parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
            print(f"skipped data ({parts})", file=sys.stderr)
