"""The machine's matmul peak: GFLOP/s of one large matrix product per precision, the ceiling a stage's achieved
FLOP/s is read against (a stage at a tenth of it waits on something else: data, memory, the store's reads).

The product is [M, K] x [K, N] (default 4096 x 768 x 3072, a bert-base feed-forward over 4,096 tokens), timed as the
median of ``--repeats`` calls after ``--warmup`` untimed ones, in each precision asked for, on the device the
scripts would pick (``--device`` overrides) with ``--threads`` CPU threads (default: torch's). A precision the
device cannot run is said in its row, not skipped in silence. Writes ``{output}/matmul_peak.json`` and ``.md``.

python bench/matmul_peak.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from utils.device import cpu_multiplies_bf16, pick_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, repeats: int, warmup: int) -> float:
    """Median GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype`` on ``device`` (2 m k n FLOPs a product)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    seconds = []
    for call in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if call >= warmup:
            seconds.append(time.perf_counter() - started)
    return 2 * m * k * n / statistics.median(seconds) / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[4096, 768, 3072], metavar=("M", "K", "N"))
    parser.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default="storage/bench")
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--shape and --repeats must be positive, --warmup and --threads non-negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    m, k, n = args.shape
    rows = {}
    for name in args.precisions:
        try:
            rows[name] = round(matmul_gflops(device, DTYPES[name], m, k, n, args.repeats, args.warmup), 1)
        except RuntimeError as error:  # a precision this device has no kernel for
            rows[name] = f"not run: {str(error).splitlines()[0]}"
    result = {
        "device": str(device),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_multiplies_bf16": cpu_multiplies_bf16() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "shape": [m, k, n],
        "repeats": args.repeats,
        "gflops": rows,
    }
    lines = [f"matmul {m} x {k} x {n} on {device} ({result['threads']} threads, torch {torch.__version__})", ""]
    lines += ["| precision | GFLOP/s |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows.items())]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "matmul_peak.json").write_text(json.dumps(result, indent=2))
    (output / "matmul_peak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
