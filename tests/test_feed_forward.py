"""Feed-forward students (retrain_single_block.py --part ffn): inits, training on the teacher's signal in their
own runs, assembly into a model that saves, reloads and exports."""

import torch
from transformers import AutoModelForMaskedLM, BertForMaskedLM

import finetune_fully_merged
import retrain_merge
import retrain_single_block
from bench import assemble as assemble_notebook
from conftest import one_line_error, storage_of, tiny_config
from models import FFN_INIT, FeedForward, SimplifiedBert, assemble
from utils.assembly import collect_feed_forwards
from utils.export import export_hf
from utils.model_io import load_simplified
from utils.teacher import load_teacher

FFN = ["--part", "ffn", "--ffn_width", "16", "32"]


def test_inits_give_the_asked_width_and_all_neurons_are_the_teachers_feed_forward():
    torch.manual_seed(0)
    model = SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config()).eval()).eval()  # 64 neurons
    states = torch.randn(7, 32)
    teacher_ffn = FeedForward.of_layer(model.layers[1])
    exact = FFN_INIT["neurons"].function(model, 1, 64, list(range(64)))
    assert torch.allclose(exact(states), teacher_ffn(states), atol=1e-6)
    for init in FFN_INIT.names():
        keep = list(range(0, 64, 4)) if init == "neurons" else None
        student = FFN_INIT[init].function(model, 1, 16, keep)
        assert student.spec == {"intermediate_size": 16} and student(states).shape == (7, 32)
    replaced = assemble(model, feed_forwards={1: exact}).eval()
    ids, mask = torch.tensor([[101, 2023, 103, 102]]), torch.ones(1, 4, dtype=torch.long)
    assert torch.allclose(replaced.encode(ids, mask), model.encode(ids, mask), atol=1e-5)


def test_feed_forward_students_train_in_their_own_runs_and_assemble(run_flags, tiny_teacher_dir, tiny_data_dir):
    flags = run_flags() + ["--block", "0", "1", "--epochs", "2", "--lr", "3e-3"]
    histories = retrain_single_block.main(flags + FFN)  # four students in lockstep, one teacher pass per batch
    assert sorted(histories) == ["ffn_0_16", "ffn_0_32", "ffn_1_16", "ffn_1_32"]
    for records in histories.values():
        assert [r["epoch"] for r in records] == [0, 1, 2] and records[-1]["ffn_mse"] < records[0]["ffn_mse"]
        assert "replaced_top1" in records[-1]
    storage = storage_of(flags)
    teacher = load_teacher(tiny_teacher_dir)
    feed_forwards, sources, missing = collect_feed_forwards(storage.root, teacher.model, teacher.name, 16)
    assert sorted(feed_forwards) == [0, 1] and missing == [2] and sources[0] == storage.ffn_output(0, 16)
    common = ["--storage_directory", str(storage.root), "--teacher", tiny_teacher_dir, "--block_heads", "2"]
    common += ["--block_d_k", "8", "--data_dir", tiny_data_dir, "--eval_sentences", "16", "--ffn_width", "16"]
    assemble_notebook.main(common)  # no attention runs: every layer keeps the teacher's attention
    model, _, _ = load_simplified(storage.retrained_model(2, 8, ffn_width=16))
    assert [layer.ffn_in.out_features for layer in model.layers] == [16, 16, 64]
    state = torch.load(storage.ffn_output(1, 16), weights_only=True)["model"]
    assert torch.equal(model.layers[1].ffn_out.weight, state["ffn_out.weight"])


def test_feed_forward_flags_refuse_what_does_not_apply(run_flags, capsys):
    flags = run_flags() + ["--block", "0", "--epochs", "1"]
    message = one_line_error(capsys, retrain_single_block.main, flags + FFN + ["--criterion", "L1", "--loss_on_scores"])
    assert "--part ffn: a feed-forward student is distilled by --criterion MSE or L1" in message
    message = one_line_error(capsys, retrain_single_block.main, flags + ["--ffn_width", "16"])
    assert "--ffn_width and --ffn_init are for feed-forward students: add --part ffn" in message
    message = one_line_error(capsys, retrain_single_block.main, flags + ["--part", "ffn"])
    assert "--part ffn needs --ffn_width" in message


def test_a_model_with_per_layer_feed_forward_widths_exports_with_remote_code(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config()).eval()).eval()
    student = FFN_INIT["random"].function(model, 2, 24)
    mixed = assemble(model, feed_forwards={2: student}).eval()
    assert export_hf(mixed, tokenizer, tmp_path / "out") != "bert"
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    ids, mask = torch.tensor([[101, 2023, 103, 102]]), torch.ones(1, 4, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    labels[0, 2] = 2023
    assert torch.allclose(
        exported(input_ids=ids, attention_mask=mask).logits[0, 2], mixed(ids, mask, labels)[0], atol=1e-4
    )


def test_merged_pairs_take_a_narrower_feed_forward(run_flags, tiny_teacher_5_layers, capsys):
    flags = run_flags(teacher=tiny_teacher_5_layers) + [
        "--block_heads",
        "4",
        "--block_d_k",
        "8",
        "--merge_ffn_width",
        "16",
    ]
    histories = retrain_merge.main(flags + ["--block", "all", "--merge_init", "first", "--epochs", "1"])
    assert sorted(histories) == ["merge_0_8_4-init_first_ffn16", "merge_2_8_4-init_first_ffn16"]
    finetune_fully_merged.main(flags + ["--merge_init", "first", "--epochs", "0"])
    model, _, meta = load_simplified(storage_of(flags).merged_model(4, 8, "merge", "-init_first_ffn16"))
    assert [layer.ffn_in.out_features for layer in model.layers] == [16, 16, 64] and meta["merge_init"] == "first"
    message = one_line_error(capsys, retrain_merge.main, flags + ["--block", "0", "--merge_init", "average"])
    assert "needs their feed-forward width" in message


def test_a_multi_block_multi_width_run_gives_each_student_its_own_runs_weights(run_flags, tmp_path):
    together = run_flags(storage=tmp_path / "together") + ["--epochs", "1"]
    retrain_single_block.main(together + ["--block", "0", "2"] + FFN)
    for block in (0, 2):
        for width in (16, 32):
            alone = run_flags(storage=tmp_path / f"alone_{block}_{width}") + ["--epochs", "1"]
            retrain_single_block.main(alone + ["--block", str(block), "--part", "ffn", "--ffn_width", str(width)])
            expected = torch.load(storage_of(alone).ffn_run(block, width) / "latest.pt", weights_only=True)["model"]
            got = torch.load(storage_of(together).ffn_run(block, width) / "latest.pt", weights_only=True)["model"]
            assert all((got[name] - tensor).abs().max() <= 1e-6 for name, tensor in expected.items())
