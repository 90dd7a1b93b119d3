"""Start-up shared by the scripts: the error boundary, logging, seeding, device."""

from __future__ import annotations

import functools
import logging
import os
import sys

import datasets
import torch
import transformers

from utils.args import Flags, parse_args
from utils.device import pick_device, resolve_precision
from utils.distributed import init_distributed
from utils.errors import UserError
from utils.files import release_run_locks
from utils.preemption import PREEMPTION

log = logging.getLogger("sitra")


def start(flags: Flags, seed: int = 0) -> torch.device:
    """Configure logging, seed torch, pick the device (``--device``, else the GPU when there is one) and make
    ``--precision auto`` concrete for it (:func:`~utils.device.resolve_precision`, logged)."""
    world = init_distributed()
    level = logging.INFO if world.is_main else logging.WARNING  # under torchrun, rank 0 speaks for all
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    transformers.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    torch.manual_seed(seed)
    device = pick_device(flags.runtime.device, world.local_rank)
    training = getattr(flags, "training", None)
    if training is not None:  # once per run: its identity, checkpoints and autocast all see the concrete precision
        training.precision, why = resolve_precision(device, training.precision)
        log.info("precision: %s (%s)", training.precision, why)
    log.info("device %s; flags: %s", device, flags.command_line())
    return device


def parse_and_start(
    groups: list[type], description: str, argv: list[str] | None = None, **defaults
) -> tuple[Flags, torch.device]:
    """A script's flags (:func:`parse_args` of its ``groups``, ``defaults`` its own defaults) and its device, after
    :func:`start` seeded by ``--seed``."""
    flags = parse_args(groups, description, argv, **defaults)
    return flags, start(flags, flags.data.seed)


EXIT_USER_ERROR = 2
SHOW_TRACEBACK = "SITRA_TRACEBACK"  # set to 1 to see the traceback of an unexpected error


def cli_entry(main):
    """Run ``main()`` with the preemption signals handled from its first line; a :class:`UserError`
    becomes ``error: <message>`` and exit code 2, and so does any other exception (one line naming its
    type; ``SITRA_TRACEBACK=1`` shows the traceback). Run locks are released however it ends."""

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
            release_run_locks()

    return wrapper
