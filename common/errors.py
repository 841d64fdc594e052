"""Errors a user can cause end with one clear sentence and a non-zero exit, never a traceback."""
import functools
import sys


class UserError(Exception):
    """Bad input from the user: a missing dataset, a wrong checkpoint, an occupied run directory."""

    exit_code = 2


EXIT_USER_ERROR = 2


def one_sentence(error: UserError) -> str:
    """The user's sentence of an error, also when a DataLoader worker raised it: torch re-raises it
    in the main process with the worker's traceback around it, whose last line is the sentence."""
    message = str(error).strip()
    if "Original Traceback" in message:
        last = message.splitlines()[-1]
        message = last.split(f"{type(error).__name__}: ", 1)[-1]
    return message


def one_line(text: str) -> str:
    """`text` with every character that is not printable escaped (a newline as \\n): a path or a value from
    outside cannot split the sentence that names it, nor forge the next line of the output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def exits_cleanly(main):
    """Wrap a command's main(): a UserError prints `error: <sentence>` on stderr and exits with its code
    (2); a run stopped by a signal prints what it saved and how to resume, and exits with 128 + signal."""
    from .stops import RunStopped, ignore_further_signals

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {one_line(one_sentence(e))}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except RunStopped as e:
            ignore_further_signals()
            if str(e):
                print(str(e), file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C before or after the run proper: nothing to save
            ignore_further_signals()
            sys.exit(130)

    return wrapper
