"""Preemption and interruption signals, handled from the first line of every script (no heavy imports here)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_REQUEUE = 75  # EX_TEMPFAIL: the run stopped on a signal (after checkpointing, if it was training); rerun


class Preemption:
    """SIGTERM / SIGUSR1 (SLURM's warning before preemption or the time limit) and SIGINT (Ctrl-C), handled
    from process start (:meth:`install`, called by every script's entry point).

    Inside :meth:`deferred` (the training loop, its evaluations and checkpoint writes) a signal is only
    recorded: the loop finishes its step, checkpoints its position and exits with :data:`EXIT_REQUEUE`.
    Anywhere else (start-up, loading) nothing is half-written, so the process exits at once with
    :data:`EXIT_REQUEUE` and one line, no traceback: a requeued task simply starts again.
    """

    def __init__(self):
        self.received: int | None = None
        self.depth = 0

    def install(self) -> dict:
        """Handle the signals from now on; returns the previous handlers (for :meth:`restore`)."""
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return {}  # only the main thread may handle signals (a script run from a thread keeps the defaults)
        return {signum: signal.signal(signum, self._handle) for signum in PREEMPTION_SIGNALS}

    @staticmethod
    def restore(previous: dict) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signum
        name = signal.Signals(signum).name
        if self.depth:
            log.warning("received %s: stopping after this step", name)
            return
        print(f"stopped by {name} before training; rerun to start again (exit {EXIT_REQUEUE})", file=sys.stderr)
        raise SystemExit(EXIT_REQUEUE)

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield self
        finally:
            self.depth -= 1


PREEMPTION = Preemption()  # one per process


def exit_if_signalled(step: int | None) -> None:
    """A signal that came before training started: exit for requeueing (after the first checkpoint, at ``step``)."""
    if PREEMPTION.received is not None:
        where = "before the first checkpoint" if step is None else f"at step {step}, checkpoint written"
        log.warning("stopped by a signal %s; exiting (exit %d)", where, EXIT_REQUEUE)
        raise SystemExit(EXIT_REQUEUE)
