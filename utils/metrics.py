"""Masked-token evaluation shared by every script: one pass, several models, the same masks.

For each model at each masked token: top-1/5/10 accuracy against the true token; against the
teacher: same top-1, teacher's top-1 within the model's top-5, KL(teacher || model); against a
larger reference model: whether the model's top-1 lies in the reference's top-1/5/10.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from tqdm.auto import tqdm

from models import IGNORE_INDEX
from utils.device import to_device

TOP_K = (1, 5, 10)


def kl_divergence(teacher_log_probs: torch.Tensor, model_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || model) per row: log-probabilities [N, V] -> [N]."""
    return (teacher_log_probs.exp() * (teacher_log_probs - model_log_probs)).sum(-1)


@torch.no_grad()
def evaluate_mlm(
    models: dict[str, nn.Module],
    loader,
    device: torch.device,
    teacher: str | None = "teacher",
    reference: nn.Module | None = None,
    keep_predictions: bool = False,
    desc: str = "evaluating",
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """Metrics per model name, and (with ``keep_predictions``) top-10 token ids per model, [N, 10].

    Each model maps ``(input_ids, attention_mask, labels)`` to logits [N, V] at the N masked tokens.
    ``teacher`` names the entry of ``models`` the agreement metrics compare with (None: no agreement).
    """
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    predictions: dict[str, list[torch.Tensor]] = defaultdict(list)
    count = 0
    for batch in tqdm(loader, desc=desc, leave=False):
        batch = to_device(batch, device)
        targets = batch["labels"][batch["labels"] != IGNORE_INDEX]  # [N]
        log_probs = {name: model(**batch).float().log_softmax(-1) for name, model in models.items()}  # [N, V]
        top10 = {name: lp.topk(max(TOP_K), dim=-1).indices for name, lp in log_probs.items()}  # [N, 10]
        reference_top10 = reference(**batch).topk(max(TOP_K), dim=-1).indices if reference is not None else None
        for name, top in top10.items():
            for k in TOP_K:
                sums[name][f"top{k}"] += (top[:, :k] == targets[:, None]).any(-1).sum().item()
            if teacher is not None and name != teacher:
                teacher_top = top10[teacher]
                sums[name]["agree_top1"] += (top[:, 0] == teacher_top[:, 0]).sum().item()
                sums[name]["teacher_top1_in_top5"] += (top[:, :5] == teacher_top[:, :1]).any(-1).sum().item()
                kl = kl_divergence(log_probs[teacher], log_probs[name])  # [N]
                sums[name]["kl_from_teacher"] += kl.clamp_min(0).sum().item()  # >= 0 up to rounding
            if reference_top10 is not None:
                for k in TOP_K:
                    sums[name][f"in_reference_top{k}"] += (reference_top10[:, :k] == top[:, :1]).any(-1).sum().item()
            if keep_predictions:
                predictions[name].append(top.cpu())
        if keep_predictions and reference_top10 is not None:
            predictions["reference"].append(reference_top10.cpu())
        count += len(targets)
    metrics = {name: {key: value / max(count, 1) for key, value in values.items()} for name, values in sums.items()}
    for values in metrics.values():
        values["sentences"] = count
    return metrics, {name: torch.cat(chunks) for name, chunks in predictions.items()}
