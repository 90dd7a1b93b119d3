"""ONNX export of any simplified model (per-layer heads, d_k, feed-forward widths, merged and dropped layers), for
ONNX Runtime: dynamic batch and sequence axes; optionally only the logits at the masked positions (what fill-mask
and evaluation need: the vocabulary head at 40 positions costs more than a small encoder); optionally a dynamically
quantized int8 copy. Needs the ``deploy`` extra (``pip install '.[deploy]'``: onnx, onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import SimplifiedBert
from utils.errors import UserError
from utils.files import atomic_write

OPSET = 17


class AllLogits(nn.Module):
    """input_ids, attention_mask [B, T] -> logits [B, T, V]."""

    def __init__(self, model: SimplifiedBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.mlm_head(self.model.encode(input_ids, attention_mask))


class MaskedLogits(nn.Module):
    """input_ids, attention_mask [B, T] -> logits [N, V] at the N positions holding ``mask_token_id``, in
    row-major order: the vocabulary head runs only there."""

    def __init__(self, model: SimplifiedBert, mask_token_id: int):
        super().__init__()
        self.model, self.mask_token_id = model, mask_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode(input_ids, attention_mask)
        return self.model.mlm_head(hidden[input_ids == self.mask_token_id])


def export_onnx(model: SimplifiedBert, path: str | Path, mask_token_id: int | None = None) -> Path:
    """Write ``model`` (fp32, eval) to ``path`` atomically; with ``mask_token_id`` only the masked positions'
    logits are computed. Returns the path."""
    path = Path(path)
    wrapper = (AllLogits(model) if mask_token_id is None else MaskedLogits(model, mask_token_id)).eval().cpu()
    ids = torch.tensor([[101, 2023, 103, 102], [101, 103, 2003, 102]])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    axes["logits"] = {0: "positions"} if mask_token_id is not None else {0: "batch", 1: "sequence"}

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (ids, torch.ones_like(ids)),
                str(tmp),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: dynamic axes without onnxscript
            )

    atomic_write(path, write)
    return path


def quantize_int8(source: str | Path, target: str | Path) -> Path:
    """A dynamically quantized (int8 weights of every MatMul) copy of an exported model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    atomic_write(target, lambda tmp: quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8))
    return target


def import_onnx_runtime():
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        raise UserError("--onnx needs onnx and onnxruntime: pip install '.[deploy]'") from None
    return onnxruntime


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session of an exported model (``threads``: intra-op threads, default the runtime's)."""
    onnxruntime = import_onnx_runtime()
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
