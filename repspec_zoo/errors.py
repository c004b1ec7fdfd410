"""The one base class of errors a user can fix.

An ``UserError`` is expected (a bad name, a missing or damaged file, a mismatched input): its
message names the input and the fix in one sentence. The CLI prints it as one line
(``repspec-zoo CMD: error: ...``) and exits 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An expected, user-fixable error; ``str(err)`` names the bad input and the fix."""
