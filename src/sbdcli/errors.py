"""The one exception type for mistakes a user can fix (bad path, bad flag, bad file).

The CLI turns a `UserError` into one line on stderr and exit status 2. Library code
raises it for user-facing problems only; bugs stay ordinary exceptions.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""
