"""Errors a user can cause end with one clear sentence and a non-zero exit, never a traceback."""
import functools
import sys


class UserError(Exception):
    """Bad input from the user: a missing dataset, a wrong checkpoint, an occupied run directory."""


EXIT_USER_ERROR = 2


def exits_cleanly(main):
    """Wrap a command's main(): a UserError prints `error: <sentence>` on stderr and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
