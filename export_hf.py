"""Export a simplified model as a Hugging Face folder: ``from_pretrained``, ``pipeline("fill-mask")`` and the
Trainer load it without sitra. Plain ``BertForMaskedLM`` (no code) when every layer has the teacher's layout,
else a folder with its own modeling code (load with ``trust_remote_code=True``).

``--onnx FILE`` also writes an ONNX model for ONNX Runtime (dynamic batch and sequence; ``--onnx_masked_only``: logits
at the [MASK] positions only; ``--onnx_fused``: the graph fused by ONNX Runtime's transformer optimizer, checked against
sitra's logits; ``--onnx_shortlist K``: the vocabulary head over the K tokens most frequent in the training split only;
``--onnx_int8``: a dynamically quantized copy, ``--onnx_int8_parts`` of the parts named only).

Example: python export_hf.py --model storage/models/merged_32_12 --output_dir exported/merged_32_12
"""

from dataclasses import dataclass
from typing import Optional

from utils.args import DataArguments, flag, parse_args, require
from utils.data import training_shortlist
from utils.experiment import cli_entry, log, start
from utils.export import export_hf
from utils.model_io import load_simplified
from utils.onnx_export import INT8_PARTS, export_onnx, import_onnx_runtime, quantize_int8
from utils.onnx_optimize import export_fused_onnx


@dataclass
class ExportTargetArguments:
    attribute = "export_target"

    model: str = flag(None, "Folder of a saved simplified model (sitra.json + model.safetensors).", required=True)
    output_dir: Optional[str] = flag(None, "Folder to write the Hugging Face model to (replaced only once complete).")
    onnx: Optional[str] = flag(None, "Also (or only) write an ONNX file here, for ONNX Runtime (needs '.[deploy]').")
    onnx_masked_only: bool = flag(False, "The ONNX model computes the logits at the [MASK] positions only.")
    onnx_fused: bool = flag(
        False,
        "The ONNX file is the graph fused by ONNX Runtime's transformer optimizer (attention, bias-GELU, embeddings; "
        "residual Add + LayerNorm left apart, faster here), checked against sitra's logits; a layer it cannot fuse "
        "stays unfused (logged).",
    )
    onnx_shortlist: Optional[int] = flag(
        None,
        "The ONNX file's vocabulary head computes only the K tokens most frequent in the training split (--data_dir, "
        "sentences of at most --seq_len tokens); every other token gets probability 0. Needs --onnx_masked_only; "
        "bench/onnx_accuracy.py prices it (the *_short forms).",
    )
    onnx_int8: bool = flag(False, "Also write a dynamically quantized int8 copy beside it ({name}.int8.onnx).")
    onnx_int8_parts: Optional[list[str]] = flag(
        None,
        "The parts the int8 copy quantizes (default: all); the others stay fp32. "
        "E.g. 'encoder' (embeddings and vocabulary head fp32) or 'head' (the vocabulary head only).",
        choices=list(INT8_PARTS),
    )

    def __post_init__(self):
        require(self.output_dir or self.onnx, "give --output_dir, --onnx or both")
        for name in ("onnx_masked_only", "onnx_fused", "onnx_int8"):
            require(not getattr(self, name) or self.onnx, f"--{name} needs --onnx")
        require(self.onnx_int8_parts is None or self.onnx_int8, "--onnx_int8_parts needs --onnx_int8")
        require(self.onnx_shortlist is None or self.onnx_masked_only, "--onnx_shortlist needs --onnx_masked_only")
        require(self.onnx_shortlist is None or self.onnx_shortlist > 0, "--onnx_shortlist must be positive")
        require(not self.onnx or self.onnx.endswith(".onnx"), f"--onnx {self.onnx}: expected a file name ending .onnx")


@cli_entry
def main(argv: list[str] | None = None) -> str:
    flags = parse_args([ExportTargetArguments, DataArguments], __doc__, argv)
    start(flags)
    options = flags.export_target
    if options.onnx:
        import_onnx_runtime()  # before anything is loaded
    model, tokenizer, meta = load_simplified(options.model)
    kind = None
    if options.output_dir:
        kind = export_hf(model, tokenizer, options.output_dir, meta)
        how = "plain BertForMaskedLM" if kind == "bert" else "custom code: load with trust_remote_code=True"
        log.info("exported %s to %s (%s)", options.model, options.output_dir, how)
    if options.onnx:
        masked = tokenizer.mask_token_id if options.onnx_masked_only else None
        shortlist = None
        if options.onnx_shortlist:
            shortlist = training_shortlist(flags.data, tokenizer, options.onnx_shortlist)
        if options.onnx_fused:
            fused = export_fused_onnx(model, options.onnx, masked, shortlist=shortlist)
            path, how = fused.path, f"fused: attention of layers {fused.fused_layers}, {fused.operators}"
        else:
            path, how = export_onnx(model, options.onnx, masked, shortlist), "unfused"
        what = "masked positions" if masked else "all logits"
        what += f", the head over {len(shortlist):,} tokens" if shortlist else ""
        log.info("exported %s to %s (ONNX, %s, %s)", options.model, path, what, how)
        if options.onnx_int8:
            parts = tuple(options.onnx_int8_parts or INT8_PARTS)
            log.info(
                "int8 copy (%s int8): %s", ", ".join(parts), quantize_int8(path, path.with_suffix(".int8.onnx"), parts)
            )
    return kind


if __name__ == "__main__":
    main()
