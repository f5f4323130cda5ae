"""User-facing errors: each carries one line that names the file or step and what is wrong.

The CLI prints that line and exits non-zero, without a traceback.
"""


class MldError(Exception):
    """Base of every error a user can cause (bad input, bad options, a blown-up run)."""
