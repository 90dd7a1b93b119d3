"""Build the shared activation store: one teacher pass over the training sentences records, for every
layer (or ``--store_layers``), the hidden state entering it and its attention output before residual +
LayerNorm (fp16, token-packed, memory-mapped). Every ``--teacher_store`` block or merge run, of any shape,
then reads its slice; concurrent SLURM tasks wait for one build instead of building it twice.

Example: python build_teacher_store.py --teacher storage/teacher --storage_directory storage
"""

from utils.args import DataArguments, StorageArguments, StoreArguments, TeacherArguments, parse_args
from utils.data import load_data
from utils.experiment import cli_entry, log, start
from utils.teacher import inspect_teacher, load_teacher
from utils.teacher_cache import open_store


@cli_entry
def main(argv: list[str] | None = None) -> str:
    flags = parse_args([TeacherArguments, DataArguments, StorageArguments, StoreArguments], __doc__, argv)
    device = start(flags, flags.data.seed)
    teacher = load_teacher(inspect_teacher(flags.teacher.teacher, flags.data.seq_len), device)
    data = load_data(flags.data, teacher.tokenizer)
    folder = open_store(flags, teacher, data.train, device)
    log.info("teacher store ready: %s", folder)
    print(folder)
    return str(folder)


if __name__ == "__main__":
    main()
