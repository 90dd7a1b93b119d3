"""The field's strongest structured pruning, CoFi (Xia, Zhong and Chen, ACL 2022): hard-concrete masks over every
head and feed-forward neuron of the teacher, learned together with its weights by layer-wise distillation from the
teacher, a Lagrangian holding the masks' expected FLOPs at ``--budget`` of the teacher's (the target lowered from
the full model over the first ``--lagrangian_warmup`` of the steps); then the heads and neurons the masks keep, the
most open first within the budget, each scaled by its gate, saved as a simplified model that every evaluation,
healing and the export take (models/learned_masks.py).

Example (offline): python prune_cofi.py --teacher storage/teacher --budget 0.5 --output_model storage/models/cofi_50
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from models.cost import model_cost
from models.learned_masks import LearnedMasks
from utils.args import FINETUNE_FLAGS, ExportArguments, TeacherArguments, flag, require
from utils.data import eval_loader, load_data
from utils.experiment import cli_entry, log, parse_and_start
from utils.model_io import save_and_export
from utils.objectives import LearnedMaskDistillation
from utils.runs import already_finished, learned_masks_run
from utils.teacher import inspect_teacher, load_teacher
from utils.training import fit


@dataclass
class CofiArguments:
    attribute = "cofi"

    budget: float = flag(None, "The share of the teacher's encoder FLOPs per token the model keeps, in (0, 1].",
                         required=True)  # fmt: skip
    mask_lr: float = flag(0.01, "Learning rate of the masks and of the Lagrange multipliers (CoFi's reg lr).")
    lagrangian_warmup: float = flag(0.5, "Share of the training steps over which the target falls to --budget.")
    output_model: str = flag(None, "Where the pruned model is saved.", required=True)

    def __post_init__(self):
        require(0 < self.budget <= 1, f"--budget must be in (0, 1], got {self.budget}")
        require(self.mask_lr > 0, f"--mask_lr must be positive, got {self.mask_lr}")
        require(
            0 <= self.lagrangian_warmup <= 1, f"--lagrangian_warmup must be in [0, 1], got {self.lagrangian_warmup}"
        )


GROUPS = [TeacherArguments, CofiArguments, *FINETUNE_FLAGS, ExportArguments]
DEFAULTS = {"lr": 1e-4, "epochs": 1}


def optimizer_of(objective: LearnedMaskDistillation, flags) -> torch.optim.Optimizer:
    """The weights at --lr with weight decay, the masks at --mask_lr without, the multipliers at --mask_lr ascending."""
    training, cofi = flags.training, flags.cofi
    betas = (training.adam_beta1, training.adam_beta2)
    groups = [
        {"params": list(objective.student.parameters()), "lr": training.lr, "weight_decay": training.adam_weight_decay},
        {"params": list(objective.masks.parameters()), "lr": cofi.mask_lr, "weight_decay": 0.0},
        {"params": [objective.lagrangian.lambdas], "lr": cofi.mask_lr, "weight_decay": 0.0, "maximize": True},
    ]
    return torch.optim.AdamW(groups, betas=betas)


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags, device = parse_and_start(GROUPS, __doc__, argv, **DEFAULTS)
    cofi, seq_len = flags.cofi, flags.data.seq_len
    info = inspect_teacher(flags.teacher.teacher, seq_len)
    run = learned_masks_run(flags, info, Path(cofi.output_model).name)
    if already_finished(run, flags, Path(cofi.output_model)):
        return {"output": cofi.output_model}
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)
    student = copy.deepcopy(teacher.model).train()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    masks = LearnedMasks.of(student).to(device)
    remove = masks.install(student)
    steps = flags.training.epochs * -(-len(data.train) // flags.training.batch_size)
    distillation = flags.output_distillation
    objective = LearnedMaskDistillation(
        teacher.model, student, masks, cofi.budget, seq_len, round(cofi.lagrangian_warmup * steps),
        distillation.temperature, distillation.hard_label_weight, device,
    )  # fmt: skip
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    history = fit(
        objective, data.train, valid, flags.training, run, device, flags.data.seed, optimizer_of(objective, flags)
    )
    remove()
    pruned = masks.prune(student, cofi.budget * objective.full, seq_len).eval()
    share = model_cost(pruned, seq_len)["flops_per_token"] / objective.full
    kept = [(layer.attention.heads, layer.ffn_in.out_features) for layer in pruned.layers]
    meta = {"teacher": teacher.name, "method": "cofi", "budget": cofi.budget, "flops_share": share,
            "kept_heads_and_neurons": kept, "masks_run": str(run.path), "final_validation": history[-1]}  # fmt: skip
    save_and_export(pruned, teacher.tokenizer, cofi.output_model, meta, flags.export.export_hf)
    log.info("kept (heads, neurons) per layer %s: %.1f%% of the teacher's FLOPs; saved to %s", kept, 100 * share,
             cofi.output_model)  # fmt: skip
    return {"output": cofi.output_model, "flops_share": share, "kept": kept, "history": history}


if __name__ == "__main__":
    main()
