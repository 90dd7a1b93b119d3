"""User-facing errors: one line on stderr and a non-zero exit, never a stack trace."""

import functools
import sys


class UserError(Exception):
    """Bad input (flag, file, checkpoint); the message names it and says what was expected."""


EXIT_USER_ERROR = 2


def cli_entry(main):
    """Run ``main()``; a :class:`UserError` becomes ``error: <message>`` and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
