import pytest
import torch
from transformers import BertForMaskedLM

from conftest import tiny_config
from models import SimplifiedBert, assemble, merged_layer, student_attention
from utils.errors import UserError
from utils.model_io import load_simplified, save_simplified


def test_save_load_round_trip_gives_identical_logits(tmp_path, tokenizer):
    torch.manual_seed(0)
    teacher = SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config(num_hidden_layers=4))).eval()
    model = assemble(
        teacher, attentions={0: student_attention(teacher, 2, 8, 0.1)}, merged={2: merged_layer(teacher, 2, 3, 16, 0.1)}
    ).eval()
    save_simplified(model, tokenizer, tmp_path / "model", meta={"note": "test"})
    loaded, loaded_tokenizer, meta = load_simplified(tmp_path / "model")
    assert meta == {"note": "test"} and len(loaded_tokenizer) == len(tokenizer)
    assert [layer.spec for layer in loaded.layers] == [layer.spec for layer in model.layers]
    input_ids = torch.randint(1000, 30000, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 7:] = 0
    labels = torch.full_like(input_ids, -100)
    labels[:, 4] = 5
    assert torch.equal(loaded(input_ids, attention_mask, labels), model(input_ids, attention_mask, labels))
    # the loaded model is independent of the one saved and keeps BERT's tied embeddings
    assert loaded.mlm_head.predictions.decoder.weight is loaded.embeddings.word_embeddings.weight


def test_corrupt_or_missing_model_folders_are_refused(tmp_path, tokenizer):
    teacher = SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config())).eval()
    save_simplified(teacher, tokenizer, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot load model.safetensors"):
        load_simplified(tmp_path / "model")
    with pytest.raises(UserError, match="cannot read sitra.json"):
        load_simplified(tmp_path / "nowhere")
