"""Uncertainty of evaluation figures: percentile bootstrap over sentences (scipy.stats.bootstrap).

Every figure of an evaluation is a mean over test sentences (one masked token each), so its 95%
interval comes from resampling sentences; a difference between two models is *paired* (the same
resampled sentences for both), which is far tighter than comparing two separate intervals.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap, ttest_rel

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0  # the same resamples every time: reruns give the same intervals


def _vectorized_mean(sample, axis=-1):
    return np.mean(sample, axis=axis)


def _vectorized_difference(first, second, axis=-1):
    return np.mean(first, axis=axis) - np.mean(second, axis=axis)


def interval(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of per-sentence ``values`` [N]."""
    values = np.asarray(values, dtype=np.float64)
    if values.min() == values.max():  # no spread: the interval is the value itself
        return float(values[0]), float(values[0])
    result = bootstrap(
        (values,),
        _vectorized_mean,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        random_state=seed,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(
    first: np.ndarray, second: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> dict:
    """Mean of ``first - second`` over the same sentences [N], its paired ``confidence`` interval (percentile
    bootstrap), whether that excludes 0, and the two-sided p-value of a paired t-test (what a correction for
    several comparisons, :func:`holm`, takes)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if len(first) != len(second):
        raise ValueError(f"paired values need the same sentences: {len(first)} vs {len(second)}")
    difference = float(first.mean() - second.mean())
    if (first - second).min() == (first - second).max():  # no spread: the interval is the value, p 0 or 1
        low = high = difference
        p_value = 1.0 if difference == 0 else 0.0
    else:
        result = bootstrap(
            (first, second),
            _vectorized_difference,
            paired=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            random_state=seed,
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        p_value = float(ttest_rel(first, second).pvalue)
    return {"difference": difference, "low": low, "high": high, "excludes_zero": bool(low > 0 or high < 0),
            "p_value": p_value}  # fmt: skip


def with_intervals(metrics: dict[str, dict], values: dict[str, dict], teacher: str | None) -> None:
    """Add ``{metric}_low`` / ``{metric}_high`` for every per-sentence metric of every model, and for every
    model but the teacher the paired top-1 difference from it (``top1_vs_teacher``, ``_low``, ``_high``)."""
    for name, per_sentence in values.items():
        for key, sentence_values in per_sentence.items():
            metrics[name][f"{key}_low"], metrics[name][f"{key}_high"] = interval(sentence_values.numpy())
        if teacher is not None and name != teacher:
            paired = paired_difference(per_sentence["top1"].numpy(), values[teacher]["top1"].numpy())
            metrics[name]["top1_vs_teacher"] = paired["difference"]
            metrics[name]["top1_vs_teacher_low"], metrics[name]["top1_vs_teacher_high"] = paired["low"], paired["high"]


def holm(p_values: list[float], alpha: float = 1 - CONFIDENCE) -> list[dict]:
    """Holm's step-down correction of ``p_values`` (one per comparison a report makes): for each, its adjusted
    p-value, whether it survives at ``alpha`` overall, and the confidence level its interval takes at its step
    (1 - alpha / (m - rank), rank 0 for the smallest p)."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    corrected, running = [{} for _ in p_values], 0.0
    for rank, index in enumerate(order):
        steps = len(p_values) - rank
        running = max(running, min(1.0, steps * p_values[index]))
        corrected[index] = {"holm_p": running, "holm_survives": running < alpha, "holm_confidence": 1 - alpha / steps}
    return corrected
