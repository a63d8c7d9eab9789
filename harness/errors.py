"""The one exception type for bad user input.

Anything the user can fix (a spec field, a flag, a missing data file, an unreachable tracking
server) raises `HarnessInputError`; the CLI turns it into exit code 2 and prints its message,
never a traceback. Everything else is an internal failure (exit code 1).
"""

from __future__ import annotations


class HarnessInputError(Exception):
    """Bad input: the message is one paragraph naming the value, what is wrong and the fix."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        prefix = f"{field}: " if field else ""
        super().__init__(prefix + " ".join(message.split()))
