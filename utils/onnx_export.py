"""ONNX export of any simplified model (per-layer heads, d_k, feed-forward widths, merged and dropped layers), for
ONNX Runtime: dynamic batch and sequence axes; optionally only the logits at the masked positions (what fill-mask
and evaluation need: the vocabulary head at 40 positions costs more than a small encoder); optionally a dynamically
quantized int8 copy. Needs the ``deploy`` extra (``pip install '.[deploy]'``: onnx, onnxruntime).

Sessions (:func:`onnx_session`) leave a residual Add and its LayerNorm apart: ONNX Runtime (1.32, this 2-core x86 CPU)
would fuse them into SkipLayerNormalization at load, whose CPU kernel took 3-4x the time of Add + LayerNormalization
(12 nodes of [64, 40, 384]: 66 ms against 17 ms; of [1, 40, 384]: 1.13 ms against 0.35 ms). Load the files elsewhere
with ``disabled_optimizers=["SkipLayerNormFusion"]`` for the same."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import SimplifiedBert
from utils.errors import UserError
from utils.files import atomic_write

OPSET = 17
NO_LOGIT = -1e4  # the logit of a token outside a shortlisted head: exp(-1e4) is 0 in float32, the log stays finite
SESSION_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]  # see the module's docstring


class AllLogits(nn.Module):
    """input_ids, attention_mask [B, T] -> logits [B, T, V]."""

    def __init__(self, model: SimplifiedBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.mlm_head(self.model.encode(input_ids, attention_mask))


class ShortlistHead(nn.Module):
    """BERT's masked-LM head computed for a shortlist of K token ids only (the decoder's K rows): hidden [..., H]
    -> logits [..., V], the shortlisted tokens' as the full head gives them, every other token's :data:`NO_LOGIT`
    (probability 0), so whoever reads the logits reads them as before."""

    def __init__(self, mlm_head: nn.Module, token_ids: list[int]):
        super().__init__()
        predictions = mlm_head.predictions
        self.transform, self.vocab_size = predictions.transform, predictions.decoder.out_features
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        self.decoder = nn.Linear(predictions.decoder.in_features, len(ids))
        with torch.no_grad():
            self.decoder.weight.copy_(predictions.decoder.weight[ids])
            self.decoder.bias.copy_(predictions.decoder.bias[ids])
        self.register_buffer("token_ids", ids)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shortlisted = self.decoder(self.transform(hidden))  # [..., K]
        logits = shortlisted.new_full((*shortlisted.shape[:-1], self.vocab_size), NO_LOGIT)
        return logits.scatter(-1, self.token_ids.expand_as(shortlisted), shortlisted)


class MaskedLogits(nn.Module):
    """input_ids, attention_mask [B, T] -> logits [N, V] at the N positions holding ``mask_token_id``, in
    row-major order: the vocabulary head runs only there (over ``shortlist`` only, when given)."""

    def __init__(self, model: SimplifiedBert, mask_token_id: int, shortlist: list[int] | None = None):
        super().__init__()
        self.model, self.mask_token_id = model, mask_token_id
        # named mlm_head, so that int8's parts find it (weighted_nodes_by_part)
        self.mlm_head = None if shortlist is None else ShortlistHead(model.mlm_head, shortlist)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode(input_ids, attention_mask)
        # The head on [1, N, H], not [N, H]: its linear layers export as MatMul + Add, not Gemm, so the optimizer fuses
        # the bias and GELU, and the int8 quantizer keeps their names (a Gemm it rewrites under a new name, which
        # nodes_to_exclude then misses: an int8 copy meant to keep the head fp32 quantized it).
        head = self.model.mlm_head if self.mlm_head is None else self.mlm_head
        return head(hidden[input_ids == self.mask_token_id].unsqueeze(0)).squeeze(0)


def export_wrapper(
    model: SimplifiedBert, mask_token_id: int | None = None, shortlist: list[int] | None = None
) -> nn.Module:
    """What is exported: all logits, or with ``mask_token_id`` those at the masked positions only (with
    ``shortlist``, a list of token ids: the head computes only theirs, :class:`ShortlistHead`)."""
    if mask_token_id is None:
        if shortlist is not None:
            raise ValueError("a shortlisted head is exported with the logits at the [MASK]s only")
        return AllLogits(model).eval().cpu()
    return MaskedLogits(model, mask_token_id, shortlist).eval().cpu()


def write_graph(wrapper: nn.Module, path: Path, mask_token_id: int | None) -> None:
    """torch.onnx.export of ``wrapper`` (:func:`export_wrapper`) to ``path``, dynamic batch and sequence."""
    ids = torch.tensor([[101, 2023, 103, 102], [101, 103, 2003, 102]])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    axes["logits"] = {0: "positions"} if mask_token_id is not None else {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, torch.ones_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: dynamic axes without onnxscript
        )


def export_onnx(
    model: SimplifiedBert, path: str | Path, mask_token_id: int | None = None, shortlist: list[int] | None = None
) -> Path:
    """Write ``model`` (fp32, eval) to ``path`` atomically; with ``mask_token_id`` only the masked positions'
    logits are computed (``shortlist``: of those token ids only). Returns the path."""
    path = Path(path)
    wrapper = export_wrapper(model, mask_token_id, shortlist)
    atomic_write(path, lambda tmp: write_graph(wrapper, tmp, mask_token_id))
    return path


WEIGHT_OPS = ("MatMul", "Gemm", "Gather", "EmbedLayerNormalization", "Attention")  # what int8 would quantize
INT8_PARTS = ("embeddings", "encoder", "head")  # the parts whose weights an int8 copy may quantize


def weighted_nodes_by_part(graph) -> dict[str, list[str]]:
    """Names of the weighted nodes of ``graph`` (a ModelProto, fused or not) in each of :data:`INT8_PARTS`, by the
    module path the exporter put in their names or outputs (a fused node keeps its output's name)."""
    parts: dict[str, list[str]] = {part: [] for part in INT8_PARTS}
    for node in graph.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        names = (node.name, *node.output)
        if node.op_type == "EmbedLayerNormalization" or any("/embeddings/" in name for name in names):
            parts["embeddings"].append(node.name)
        elif any("/mlm_head/" in name for name in names):
            parts["head"].append(node.name)
        else:
            parts["encoder"].append(node.name)
    return parts


def quantize_int8(source: str | Path, target: str | Path, parts: tuple[str, ...] = INT8_PARTS) -> Path:
    """A dynamically quantized copy of an exported model (fused or not): int8 weights of every MatMul and fused
    Attention in the encoder (``encoder``), of the vocabulary head (``head``) and of the embedding tables
    (``embeddings``), for the ``parts`` named; the others stay fp32. Weights are quantized per output channel: a
    BERT feed-forward output matrix has a few columns 30-50x the others, which one scale per matrix flattens (on
    the offline teacher, 2,000 test sentences: 89.7% top-1 agreement with fp32 per channel, 78.3% per matrix, at
    the same speed)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    unknown = set(parts) - set(INT8_PARTS)
    if unknown or not parts:
        raise ValueError(f"int8 parts: expected some of {INT8_PARTS}, got {parts}")
    target = Path(target)
    by_part = weighted_nodes_by_part(onnx.load(str(source)))
    excluded = [name for part, names in by_part.items() if part not in parts for name in names]

    def write(tmp: Path) -> None:
        quantize_dynamic(
            str(source),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=excluded,
            # ONNX's shape inference does not type the outputs of ONNX Runtime's fused operators: they are fp32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )

    atomic_write(target, write)
    return target


def import_onnx_runtime():
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        raise UserError("--onnx needs onnx and onnxruntime: pip install '.[deploy]'") from None
    return onnxruntime


def onnx_session(model: str | Path | bytes, threads: int | None = None, options=None):
    """An ONNX Runtime CPU session of an exported model (a path, or the serialized model; ``threads``: intra-op
    threads, default the runtime's; ``options``: SessionOptions to start from), with the runtime's skip-LayerNorm
    fusion off (see the module's docstring)."""
    onnxruntime = import_onnx_runtime()
    options = options or onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        model if isinstance(model, bytes) else str(model),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=SESSION_DISABLED_OPTIMIZERS,
    )
