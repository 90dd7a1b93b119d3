"""export_hf.py: simplified models as Hugging Face folders that plain transformers loads, runs and trains."""

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForMaskedLM,
    Trainer,
    TrainingArguments,
    pipeline,
)

import export_hf
import train_full_merged_model
from conftest import tiny_config
from models import IGNORE_INDEX, SimplifiedBert, assemble, merged_layer, student_attention
from utils.export import export_hf as export_model
from utils.model_io import load_simplified, save_simplified

SENTENCES = ["the cat sat on the [MASK] .", "a [MASK] day in the city", "he was [MASK] in 1990 ."]


@pytest.fixture(scope="module")
def teacher_model():
    torch.manual_seed(0)
    return SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config()).eval()).eval()


def build(kind: str, base: SimplifiedBert) -> SimplifiedBert:
    torch.manual_seed(1)
    if kind == "mixed_heads":  # retrained: layer 0 with 2 x 8, layer 1 with 3 x 4, layer 2 the teacher's
        attentions = {0: student_attention(base, 2, 8, 0.1), 1: student_attention(base, 3, 4, 0.1)}
        return assemble(base, attentions=attentions).eval()
    if kind == "merged":  # layers 0-1 merged into one layer of the teacher's shape
        return assemble(base, merged={0: merged_layer(base, 0, 4, 8, 0.1, "random")}).eval()
    return assemble(base, dropped={1}).eval()  # layer drop


def masked_batch(tokenizer):
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    labels = torch.where(batch["input_ids"] == tokenizer.mask_token_id, batch["input_ids"], IGNORE_INDEX)
    return batch, labels


def sitra_logits(model, batch, labels):
    return model(batch["input_ids"], batch["attention_mask"], labels)


@pytest.mark.parametrize("kind,plain", [("mixed_heads", False), ("merged", True), ("layer_drop", True)])
def test_exported_model_matches_sitra_in_transformers(teacher_model, tokenizer, tmp_path, kind, plain):
    model = build(kind, teacher_model)
    out = tmp_path / "exported"
    assert export_model(model, tokenizer, out) == ("bert" if plain else "sitra-bert")
    batch, labels = masked_batch(tokenizer)
    expected = sitra_logits(model, batch, labels)

    loaded = AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=not plain).eval()
    logits = loaded(**batch).logits[labels != IGNORE_INDEX]
    assert (logits - expected).abs().max() <= 1e-5
    assert len(loaded.bert.layers if not plain else loaded.bert.encoder.layer) == len(model.layers)

    fill_mask = pipeline("fill-mask", model=str(out), trust_remote_code=not plain)
    for sentence, row in zip(SENTENCES, expected, strict=True):
        assert fill_mask(sentence)[0]["token"] == row.argmax().item()

    loaded.save_pretrained(tmp_path / "again")
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "again", trust_remote_code=not plain).eval()
    assert torch.equal(again(**batch).logits, loaded(**batch).logits)

    python_files = sorted(p.name for p in out.glob("*.py"))
    if plain:
        assert python_files == [] and type(AutoModelForMaskedLM.from_pretrained(out)).__name__ == "BertForMaskedLM"
    else:
        assert python_files == ["configuration_sitra_bert.py", "modeling_sitra_bert.py"]
        layers = loaded.config.layers
        assert [(layer["heads"], layer["d_k"]) for layer in layers] == [(2, 8), (3, 4), (4, 8)]
        assert layers[0]["intermediate_size"] == 64 and layers[2]["teacher_layers"] == [2]
        assert "trust_remote_code=True" in (out / "README.md").read_text()

    back, _, _ = load_simplified(out)  # every sitra evaluation takes exported folders too
    assert (sitra_logits(back, batch, labels) - expected).abs().max() <= 1e-5
    assert [layer.origin for layer in back.layers] == [layer.origin for layer in model.layers]


def test_remote_code_model_trains_with_the_trainer(teacher_model, tokenizer, tmp_path):
    out = tmp_path / "exported"
    export_model(build("mixed_heads", teacher_model), tokenizer, out)
    words = {1: ["good", "great", "fine", "nice"], 0: ["bad", "awful", "poor", "sad"]}
    rows = [{"text": f"the film was {w} today", "label": label} for label, ws in words.items() for w in ws] * 4
    dataset = Dataset.from_list(rows).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    classifier = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2, trust_remote_code=True)
    classifier.gradient_checkpointing_enable()  # the layers are checkpointed: gradients must still flow
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=30, per_device_train_batch_size=8, learning_rate=5e-3,
        lr_scheduler_type="constant",
        logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=classifier, args=arguments, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]

    tagger = AutoModelForTokenClassification.from_pretrained(out, num_labels=3, trust_remote_code=True)
    batch, _ = masked_batch(tokenizer)
    assert tagger(**batch).logits.shape == (*batch["input_ids"].shape, 3)
    encoder = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert len(encoder(**batch, output_hidden_states=True).hidden_states) == 4


def test_export_flag_of_a_finetuning_script(teacher_model, tokenizer, run_flags, tmp_path):
    saved = tmp_path / "retrained"
    save_simplified(build("mixed_heads", teacher_model), tokenizer, saved)
    out = tmp_path / "exported"
    train_full_merged_model.main(run_flags() + ["--model", str(saved), "--epochs", "1", "--export_hf", str(out)])
    finetuned, _, _ = load_simplified(f"{saved}_finetuned")
    batch, labels = masked_batch(tokenizer)
    exported = AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    logits = exported(**batch).logits[labels != IGNORE_INDEX]
    assert (logits - sitra_logits(finetuned, batch, labels)).abs().max() <= 1e-5


def test_corrupt_model_folder_is_one_line_and_writes_nothing(teacher_model, tokenizer, tmp_path, capsys):
    saved = tmp_path / "model"
    save_simplified(build("merged", teacher_model), tokenizer, saved)
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SystemExit) as exit_info:
        export_hf.main(["--model", str(saved), "--output_dir", str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1 and "model.safetensors" in errors[0]
    assert not (tmp_path / "out").exists()
