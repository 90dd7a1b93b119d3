"""Masked-token evaluation shared by every script: one pass, several models, the same masks.

For each model at each masked token: top-1/5/10 accuracy against the true token; against the
teacher: same top-1, teacher's top-1 within the model's top-5, KL(teacher || model); against a
larger reference model: whether the model's top-1 lies in the reference's top-1/5/10.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from models import IGNORE_INDEX
from utils.device import to_device

TOP_K = (1, 5, 10)


def kl_divergence(teacher_log_probs: torch.Tensor, model_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || model) per row: log-probabilities [N, V] -> [N]."""
    return (teacher_log_probs.exp() * (teacher_log_probs - model_log_probs)).sum(-1)


@dataclass
class MLMDetails:
    """Per-sentence outcomes of an evaluation (what intervals and paired differences are computed from)."""

    values: dict[str, dict[str, torch.Tensor]]  # model -> metric -> [N] (hits as 0/1, KL as float)
    predictions: dict[str, torch.Tensor]  # model (and "reference") -> top-10 token ids [N, 10]


@torch.no_grad()
def evaluate_mlm(
    models: dict[str, nn.Module],
    loader,
    device: torch.device,
    teacher: str | None = "teacher",
    reference: nn.Module | None = None,
    keep_predictions: bool = False,
    desc: str = "evaluating",
) -> tuple[dict[str, dict[str, float]], MLMDetails]:
    """Metrics per model name (means over the masked tokens, one per sentence), and the per-sentence
    values behind them (with ``keep_predictions`` also the top-10 token ids per model, [N, 10]).

    Each model maps ``(input_ids, attention_mask, labels)`` to logits [N, V] at the N masked tokens.
    ``teacher`` names the entry of ``models`` the agreement metrics compare with (None: no agreement).
    """
    chunks: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    predictions: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in tqdm(loader, desc=desc, leave=False):
        batch = to_device(batch, device)
        targets = batch["labels"][batch["labels"] != IGNORE_INDEX]  # [N]
        log_probs = {name: model(**batch).float().log_softmax(-1) for name, model in models.items()}  # [N, V]
        top10 = {name: lp.topk(max(TOP_K), dim=-1).indices for name, lp in log_probs.items()}  # [N, 10]
        reference_top10 = reference(**batch).topk(max(TOP_K), dim=-1).indices if reference is not None else None
        for name, top in top10.items():
            values = chunks[name]
            for k in TOP_K:
                values[f"top{k}"].append((top[:, :k] == targets[:, None]).any(-1))
            if teacher is not None and name != teacher:
                teacher_top = top10[teacher]
                values["agree_top1"].append(top[:, 0] == teacher_top[:, 0])
                values["teacher_top1_in_top5"].append((top[:, :5] == teacher_top[:, :1]).any(-1))
                kl = kl_divergence(log_probs[teacher], log_probs[name])  # [N]
                values["kl_from_teacher"].append(kl.clamp_min(0))  # >= 0 up to rounding
            if reference_top10 is not None:
                for k in TOP_K:
                    values[f"in_reference_top{k}"].append((reference_top10[:, :k] == top[:, :1]).any(-1))
            if keep_predictions:
                predictions[name].append(top.cpu())
        if keep_predictions and reference_top10 is not None:
            predictions["reference"].append(reference_top10.cpu())
    values = {
        name: {key: torch.cat(parts).float().cpu() for key, parts in metrics.items()}
        for name, metrics in chunks.items()
    }
    metrics = {name: {key: value.mean().item() for key, value in per.items()} for name, per in values.items()}
    for name, per in metrics.items():
        per["sentences"] = len(values[name]["top1"])
    return metrics, MLMDetails(values, {name: torch.cat(parts) for name, parts in predictions.items()})


@torch.no_grad()
def hidden_state_similarity(model, loader, device: torch.device) -> np.ndarray:
    """Mean cosine similarity over real tokens between the hidden states entering layers i and j,
    [L+1, L+1] (index L: the last layer's output); what the influence and angular drop rules rank by."""
    total, tokens = None, 0
    for batch in tqdm(loader, desc="hidden-state similarity", leave=False):
        batch = to_device(batch, device)
        mask = batch["attention_mask"].bool()
        states = [model.embeddings(input_ids=batch["input_ids"])]
        for layer in model.layers:
            states.append(layer(states[-1], mask))
        unit = torch.stack([F.normalize(state[mask].float(), dim=-1) for state in states])  # [L+1, N, H]
        similarity = torch.einsum("inh,jnh->ij", unit, unit)  # summed over the N real tokens
        total = similarity if total is None else total + similarity
        tokens += int(mask.sum())
    return (total / tokens).cpu().numpy()
