"""User-facing errors: one line on stderr and a non-zero exit, never a stack trace."""

import functools
import os
import sys

from utils.preemption import PREEMPTION


class UserError(Exception):
    """Bad input (flag, file, checkpoint); the message names it and says what was expected."""


class Diverged(UserError):
    """Training produced a non-finite loss, gradient or weight: the run stops, its last finite checkpoint kept."""


EXIT_USER_ERROR = 2
SHOW_TRACEBACK = "SITRA_TRACEBACK"  # set to 1 to see the traceback of an unexpected error


def cli_entry(main):
    """Run ``main()`` with the preemption signals handled from its first line; a :class:`UserError`
    becomes ``error: <message>`` and exit code 2, and so does any other exception (one line naming its
    type; ``SITRA_TRACEBACK=1`` shows the traceback)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        previous = PREEMPTION.install()
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except Exception as error:
            if os.environ.get(SHOW_TRACEBACK) == "1":
                raise
            message = (str(error).strip().splitlines() or [""])[0][:300]
            print(
                f"error: {type(error).__name__}: {message} (set {SHOW_TRACEBACK}=1 for the traceback)", file=sys.stderr
            )
            sys.exit(EXIT_USER_ERROR)
        finally:
            PREEMPTION.restore(previous)
            from utils.files import release_run_locks  # here: utils.files itself raises UserError

            release_run_locks()

    return wrapper
