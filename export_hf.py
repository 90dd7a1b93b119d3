"""Export a simplified model as a Hugging Face folder: ``from_pretrained``, ``pipeline("fill-mask")`` and the
Trainer load it without sitra. Plain ``BertForMaskedLM`` (no code) when every layer has the teacher's layout,
else a folder with its own modeling code (load with ``trust_remote_code=True``).

Example: python export_hf.py --model storage/models/merged_32_12 --output_dir exported/merged_32_12
"""

from dataclasses import dataclass

from utils.args import flag, parse_args
from utils.experiment import cli_entry, log, start
from utils.export import export_hf
from utils.model_io import load_simplified


@dataclass
class ExportTargetArguments:
    attribute = "export_target"

    model: str = flag(None, "Folder of a saved simplified model (sitra.json + model.safetensors).", required=True)
    output_dir: str = flag(
        None, "Folder to write the Hugging Face model to (replaced only once complete).", required=True
    )


@cli_entry
def main(argv: list[str] | None = None) -> str:
    flags = parse_args([ExportTargetArguments], __doc__, argv)
    start(flags)
    options = flags.export_target
    model, tokenizer, meta = load_simplified(options.model)
    kind = export_hf(model, tokenizer, options.output_dir, meta)
    how = "plain BertForMaskedLM" if kind == "bert" else "custom code: load with trust_remote_code=True"
    log.info("exported %s to %s (%s)", options.model, options.output_dir, how)
    return kind


if __name__ == "__main__":
    main()
