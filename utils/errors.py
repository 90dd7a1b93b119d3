"""User-facing errors: what a script reports in one ``error:`` line (see :func:`utils.experiment.cli_entry`)."""


class UserError(Exception):
    """Bad input (flag, file, checkpoint); the message names it and says what was expected."""


class Diverged(UserError):
    """Training produced a non-finite loss, gradient or weight: the run stops, its last finite checkpoint kept."""


class NotCompared(UserError):
    """Two models were never evaluated on the same masks (under every seed asked for): no paired difference."""
