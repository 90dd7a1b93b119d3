"""Build the shared activation store: one teacher pass over the training sentences records, for every
layer (or ``--store_layers``), the hidden state entering it and its attention output before residual +
LayerNorm (fp16, token-packed, memory-mapped). Every ``--teacher_store`` block or merge run, of any shape,
then reads its slice; concurrent SLURM tasks wait for one build instead of building it twice.

Every file's shape, size and SHA-256 go into the store's key.json; a build reads its files back once against
them, every opening checks each file's size (a stat), and ``--verify`` re-reads the whole store on demand. A
damaged store is refused in one line naming the file; remove its folder and rerun this with the same flags.

Example: python build_teacher_store.py --teacher storage/teacher --storage_directory storage
"""

from dataclasses import dataclass

from utils.args import DataArguments, StorageArguments, StoreArguments, TeacherArguments, flag, parse_args
from utils.data import load_data
from utils.experiment import cli_entry, log, start
from utils.teacher import inspect_teacher, load_teacher
from utils.teacher_cache import open_store, verify_store


@dataclass
class VerifyArguments:
    attribute = "verification"

    verify: bool = flag(
        False,
        "Re-read every file of the store (built first if missing) against the SHA-256 recorded at its build, and "
        "name the first that differs: a full sequential read, about 1.8 GB/s of hashing on one core.",
    )


GROUPS = [TeacherArguments, DataArguments, StorageArguments, StoreArguments, VerifyArguments]


@cli_entry
def main(argv: list[str] | None = None) -> str:
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    teacher = load_teacher(inspect_teacher(flags.teacher.teacher, flags.data.seq_len), device)
    data = load_data(flags.data, teacher.tokenizer)
    folder = open_store(flags, teacher, data.train, device)
    if flags.verification.verify:
        verify_store(folder)
    log.info("teacher store ready: %s", folder)
    print(folder)
    return str(folder)


if __name__ == "__main__":
    main()
