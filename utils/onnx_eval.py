"""The price of a deployment form in quality: ONNX Runtime sessions evaluated on sitra's masked test sentences, each
form of a model on the same masks as its fp32 graph, with paired intervals (utils/statistics.py)."""

from __future__ import annotations

import numpy as np
import torch

from models import IGNORE_INDEX
from utils.metrics import evaluate_mlm
from utils.statistics import interval, paired_difference

# A form that loses more than this much top-1 against its fp32 graph is flagged (half a point).
NOTABLE_LOSS = 0.005


class OnnxMaskedLM:
    """A session of a masked-only export called as the evaluation calls a model: ``(input_ids, attention_mask,
    labels)`` -> logits [N, V] at the N labelled positions, which must be the [MASK] tokens (the evaluation's)."""

    def __init__(self, session, mask_token_id: int):
        self.session, self.mask_token_id = session, mask_token_id

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not torch.equal(input_ids == self.mask_token_id, labels != IGNORE_INDEX):
            raise ValueError("the masked-only export predicts at the [MASK] tokens: every label must be at one")
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def price_of_forms(sessions: dict, loader, mask_token_id: int, reference: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluate each session (form -> session of one model) on ``loader``'s sentences. Per form: top-1 with its 95%
    interval; for every form but ``reference`` (the model's fp32 graph) the paired top-1 difference from it and the
    agreement with its top-1, each with its interval, and ``loses_over_half_a_point``. Also the per-sentence
    arrays (``{form}/top1``, ``{form}/agree_top1``)."""
    models = {form: OnnxMaskedLM(session, mask_token_id) for form, session in sessions.items()}
    _, details = evaluate_mlm(models, loader, torch.device("cpu"), teacher=reference, desc="evaluating ONNX forms")
    base = details.values[reference]["top1"].numpy()
    figures, arrays = {}, {}
    for form, values in details.values.items():
        top1 = values["top1"].numpy()
        low, high = interval(top1)
        entry = {"sentences": len(top1), "top1": float(top1.mean()), "top1_low": low, "top1_high": high}
        arrays[f"{form}/top1"] = top1
        if form != reference:
            paired = paired_difference(top1, base)
            entry["top1_vs_fp32"], entry["top1_vs_fp32_low"], entry["top1_vs_fp32_high"] = (
                paired["difference"],
                paired["low"],
                paired["high"],
            )
            agree = values["agree_top1"].numpy()
            entry["agree_fp32"] = float(agree.mean())
            entry["agree_fp32_low"], entry["agree_fp32_high"] = interval(agree)
            entry["loses_over_half_a_point"] = bool(paired["difference"] < -NOTABLE_LOSS)
            arrays[f"{form}/agree_top1"] = agree
        figures[form] = entry
    return figures, arrays
