"""Benchmarks (not tests): timing runs on the offline teacher or a random teacher of bert-base shape."""

# What every training benchmark times unless told otherwise: one epoch, a token validation pass (timing,
# not quality), the offline teacher's head size, results under storage/bench.
TIMING_DEFAULTS = dict(teacher="minilm", storage_directory="storage/bench", eval_sentences=1, epochs=1, block_d_k=32)
