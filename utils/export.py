"""Simplified models as standard Hugging Face folders, and back.

- Every layer with the teacher's layout (one head count for all layers, heads x d_k = hidden, the
  teacher's feed-forward width): a plain ``BertForMaskedLM`` folder, no code, loadable by any transformers.
- Otherwise: a ``sitra-bert`` folder carrying ``configuration_sitra_bert.py`` and ``modeling_sitra_bert.py``
  (from :mod:`models.hf_export`) with ``auto_map``, for ``trust_remote_code=True``.

Both record each layer's kind, teacher layers, heads, d_k and feed-forward width in ``config.json``
(``sitra_layers``, or ``layers`` for sitra-bert), and carry the tokenizer and a short README.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerBase

from models import SimplifiedBert
from models.hf_export.configuration_sitra_bert import SitraBertConfig
from models.hf_export.modeling_sitra_bert import AUTO_CLASSES, SitraBertForMaskedLM
from utils.errors import UserError
from utils.files import atomic_write_dir

PLAIN = "bert"
REMOTE_CODE = SitraBertConfig.model_type
_NOT_COPIED = ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map", "num_hidden_layers")


def hf_layer_specs(model: SimplifiedBert) -> list[dict]:
    """Per layer: heads, d_k, feed-forward width, dropouts, kind and the teacher layers it stands for."""
    return [
        {
            "heads": layer.attention.heads,
            "d_k": layer.attention.d_k,
            "intermediate_size": layer.ffn_in.out_features,
            "attention_dropout": layer.attention.dropout,
            "hidden_dropout": layer.dropout.p,
            "kind": layer.origin["kind"],
            "teacher_layers": list(layer.origin["teacher_layers"]),
        }
        for layer in model.layers
    ]


def is_plain_bert(model: SimplifiedBert) -> bool:
    """Whether ``BertForMaskedLM`` can hold the model: one head count with heads x d_k = hidden, and one
    feed-forward width (the teacher's, or a uniformly narrower one: its ``intermediate_size``), in every layer."""
    config, specs = model.config, hf_layer_specs(model)
    return (
        len({spec["heads"] for spec in specs}) == 1
        and len({spec["intermediate_size"] for spec in specs}) == 1
        and all(spec["heads"] * spec["d_k"] == config.hidden_size for spec in specs)
    )


def _bert_fields(config: BertConfig) -> dict:
    return {key: value for key, value in config.to_dict().items() if key not in _NOT_COPIED}


def _plain_state_dict(model: SimplifiedBert) -> dict[str, torch.Tensor]:
    """``BertForMaskedLM`` names for a plain-shaped simplified model's weights."""
    names = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.output": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            module, parameter = rest.rsplit(".", 1)
            key = f"bert.encoder.layer.{index}.{names[module]}.{parameter}"
        elif key.startswith("embeddings."):
            key = f"bert.{key}"
        else:
            key = key.replace("mlm_head.", "cls.", 1)
        state[key] = tensor
    return state


def to_hugging_face(model: SimplifiedBert) -> BertForMaskedLM | SitraBertForMaskedLM:
    """A Hugging Face masked LM with the model's weights (copied): plain BERT when it fits, else sitra-bert."""
    specs = hf_layer_specs(model)
    if is_plain_bert(model):
        config = BertConfig(
            **{
                **_bert_fields(model.config),
                "num_hidden_layers": len(specs),
                "num_attention_heads": specs[0]["heads"],
                "intermediate_size": specs[0]["intermediate_size"],
            },
            sitra_layers=specs,
        )
        hf_model, state = BertForMaskedLM(config), _plain_state_dict(model)
    else:
        config = SitraBertConfig(layers=specs, **_bert_fields(model.config))
        config.auto_map = {"AutoConfig": "configuration_sitra_bert.SitraBertConfig"} | {
            auto: f"modeling_sitra_bert.{cls.__name__}" for auto, cls in AUTO_CLASSES.items()
        }
        hf_model = SitraBertForMaskedLM(config)
        state = {
            ("cls." + key[len("mlm_head.") :]) if key.startswith("mlm_head.") else f"bert.{key}": tensor
            for key, tensor in model.state_dict().items()
        }
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    if set(missing) - tied or unexpected:  # a layout this module does not know: never export half a model
        raise RuntimeError(
            f"export mapping incomplete: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return hf_model.eval()


def export_hf(
    model: SimplifiedBert, tokenizer: PreTrainedTokenizerBase, output_dir: str | Path, meta: dict | None = None
) -> str:
    """Write ``output_dir`` (atomically: a failure leaves what was there) and return its kind, ``bert``
    (plain, no code) or ``sitra-bert`` (remote code)."""
    hf_model = to_hugging_face(model.cpu())
    kind = hf_model.config.model_type
    if kind == REMOTE_CODE:
        SitraBertConfig.register_for_auto_class()  # save_pretrained copies the two source files
        SitraBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")

    def write(folder: Path) -> None:
        hf_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(model_card(hf_model, kind, meta or {}))

    atomic_write_dir(Path(output_dir), write)
    return kind


def model_card(hf_model, kind: str, meta: dict) -> str:
    specs = hf_layer_specs_of_config(hf_model.config)
    rows = "\n".join(
        f"| {i} | {s['kind']} | {s['teacher_layers']} | {s['heads']} | {s['d_k']} | {s['intermediate_size']} |"
        for i, s in enumerate(specs)
    )
    remote = ", trust_remote_code=True" if kind == REMOTE_CODE else ""
    return f"""---
library_name: transformers
tags: [fill-mask, bert, sitra]
---
# A simplified BERT (exported by sitra)

```python
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
model = AutoModelForMaskedLM.from_pretrained("PATH"{remote})
fill = pipeline("fill-mask", model="PATH"{remote})
```

| layer | kind | teacher layers | heads | d_k | feed-forward |
|---|---|---|---|---|---|
{rows}

Teacher: {meta.get("teacher", "unknown")}
"""


def hf_layer_specs_of_config(config) -> list[dict]:
    """The per-layer specs an exported config records (``layers`` of sitra-bert, ``sitra_layers`` of plain BERT)."""
    specs = getattr(config, "layers", None) or getattr(config, "sitra_layers", None)
    if specs is None:  # a plain BERT folder not written by sitra
        specs = SitraBertConfig(**_bert_fields(config), num_hidden_layers=config.num_hidden_layers).layers
    return specs


def is_exported(folder: str | Path) -> bool:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type") in (PLAIN, REMOTE_CODE)
    except (OSError, json.JSONDecodeError):
        return False


def load_exported(folder: str | Path) -> SimplifiedBert:
    """A :class:`SimplifiedBert` (eval mode, CPU) from an exported folder; one-line error if it is unreadable."""
    folder = Path(folder)
    try:
        config_dict = json.loads((folder / "config.json").read_text())
        model_type = config_dict["model_type"]
        # sitra has the classes: build the config itself so that no remote code is asked for
        model_class, config_class = (
            (BertForMaskedLM, BertConfig) if model_type == PLAIN else (SitraBertForMaskedLM, SitraBertConfig)
        )
        config = config_class.from_dict({k: v for k, v in config_dict.items() if k != "auto_map"})
        hf_model = model_class.from_pretrained(folder, config=config)
    except Exception as error:  # missing or truncated weights, bad config: all one message
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"--model {folder}: not a loadable exported model ({first_line})") from None
    specs = hf_layer_specs_of_config(hf_model.config)
    teacher_config = BertConfig(
        **{k: v for k, v in _bert_fields(hf_model.config).items() if k not in ("layers", "sitra_layers")}
    )
    layer_specs = [{**spec, "dropout": spec["attention_dropout"]} for spec in specs]
    if model_type == PLAIN:
        model = SimplifiedBert.from_teacher(hf_model)  # shares the loaded weights
        for layer, spec in zip(model.layers, layer_specs, strict=True):
            layer.origin = {"kind": spec["kind"], "teacher_layers": spec["teacher_layers"]}
        model.config = teacher_config
        return model.eval()
    model = SimplifiedBert.from_spec(teacher_config, layer_specs)
    state = {
        ("mlm_head." + key[len("cls.") :]) if key.startswith("cls.") else key.removeprefix("bert."): tensor
        for key, tensor in hf_model.state_dict().items()
    }
    model.load_state_dict(state)
    return model.eval()
