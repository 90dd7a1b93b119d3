"""Uncertainty of evaluation figures over sentences.

Every figure of an evaluation is a mean over test sentences (one masked token each), so its 95% interval comes
from resampling sentences (percentile bootstrap, scipy.stats.bootstrap); a difference between two models is
*paired* (the same sentences for both, a paired t-test and its interval), which is far tighter than comparing
two separate intervals; over several seeds, a two-level bootstrap resamples seeds as well as sentences.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy.stats import bootstrap, ttest_rel

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0  # the same resamples every time: reruns give the same intervals


def _vectorized_mean(sample, axis=-1):
    return np.mean(sample, axis=axis)


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


def paired_difference(first: np.ndarray, second: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Mean of ``first - second`` over the same sentences [N], the paired t-test's two-sided p-value and its
    ``confidence`` interval, and whether that excludes 0. Interval and p come from one test, so the interval at
    any level (95%, or a Holm step's 1 - 0.05 / m) excludes 0 exactly where p is below that level's alpha; a
    percentile bootstrap of a thousand resamples cannot place the 0.06% tails of Holm's first steps (with 45
    comparisons), and disagreed with the p it stood beside."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if len(first) != len(second):
        raise ValueError(f"paired values need the same sentences: {len(first)} vs {len(second)}")
    difference = float(first.mean() - second.mean())
    if (first - second).min() == (first - second).max():  # no spread: the interval is the value, p 0 or 1
        low = high = difference
        p_value = 1.0 if difference == 0 else 0.0
    else:
        test = ttest_rel(first, second)
        low, high = (float(end) for end in test.confidence_interval(confidence))
        p_value = float(test.pvalue)
    return {"difference": difference, "low": low, "high": high, "excludes_zero": bool(low > 0 or high < 0),
            "p_value": p_value}  # fmt: skip


SEED_RESAMPLES = 10000  # the two-level bootstrap's: its p-value and intervals reach Holm's levels (1 - 0.05 / m)


_ESTIMATES: dict[tuple, np.ndarray] = {}  # the resamples of recent differences: a level's interval reuses them
_ESTIMATES_KEPT = 32  # 80 KB each at 10,000 resamples


def _seed_and_sentence_estimates(differences: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The two-level bootstrap's mean differences [resamples] of ``differences`` [S, N]; the same ``differences``
    under the same ``seed`` give the same resamples, so they are drawn once (a report asks for a comparison's
    interval at 95% and again at its Holm level)."""
    key = hashlib.sha256(differences.tobytes()).hexdigest(), differences.shape, resamples, seed
    if key in _ESTIMATES:
        return _ESTIMATES[key]
    seeds, sentences = differences.shape
    rng = np.random.default_rng(seed)
    estimates = []
    for start in range(0, resamples, 500):  # 500 resamples at a time: [500, N] floats, not [resamples, N]
        count = min(500, resamples - start)
        weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=count) / seeds  # [B, S] seeds drawn
        picked = rng.integers(0, sentences, size=(count, sentences))  # [B, N] sentences drawn
        seed_averaged = weights @ differences  # [B, N]: each sentence's difference over the drawn seeds
        estimates.append(np.take_along_axis(seed_averaged, picked, axis=1).mean(axis=1))
    if len(_ESTIMATES) >= _ESTIMATES_KEPT:
        del _ESTIMATES[next(iter(_ESTIMATES))]  # the oldest
    _ESTIMATES[key] = np.concatenate(estimates)
    _ESTIMATES[key].flags.writeable = False
    return _ESTIMATES[key]


def seed_and_sentence_difference(
    first: np.ndarray,
    second: np.ndarray,
    resamples: int = SEED_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict:
    """Mean of ``first - second`` [S, N] (the two models trained under S seeds, each pair evaluated on the same N
    sentences and masks) over seeds and sentences, with a two-level percentile bootstrap that resamples both: each
    resample draws S seeds with replacement and N sentences with replacement (the same sentences under every
    seed, as they share their masks), so the interval holds the seeds' spread as well as the sentences'. The
    two-sided p-value is the resamples' share on the far side of 0 (doubled, counting the observed one), so an
    interval at level 1 - a excludes 0 where p < a. Keys as :func:`paired_difference`'s."""
    if np.ndim(first) != 2 or np.shape(first) != np.shape(second):  # before subtracting: [1, N] - [S, N] broadcasts
        raise ValueError(f"seed x sentence values need the same shape [S, N]: {np.shape(first)} vs {np.shape(second)}")
    differences = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    estimates = _seed_and_sentence_estimates(differences, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = (float(value) for value in np.quantile(estimates, [tail, 1 - tail]))
    far_side = min(np.count_nonzero(estimates <= 0), np.count_nonzero(estimates >= 0))
    p_value = min(1.0, 2 * (far_side + 1) / (resamples + 1))
    return {"difference": float(differences.mean()), "low": low, "high": high,
            "excludes_zero": bool(low > 0 or high < 0), "p_value": p_value}  # fmt: skip


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
    p-value, whether it survives at ``alpha`` overall, and the confidence level of its interval: a surviving
    comparison's is its step's, 1 - alpha / (m - rank) (rank 0 for the smallest p); every other comparison's is
    the first failing step's, 1 - alpha / (m - r) with r survivors, so its interval holds 0 (its p is at least
    that step's). A later step's own level would be lower and could exclude 0 for a comparison that failed
    (Holm-consistent intervals, Strassburger and Bretz 2008)."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    corrected, running = [{} for _ in p_values], 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        corrected[index] = {"holm_p": running, "holm_survives": running < alpha}
    failing_steps = len(p_values) - sum(correction["holm_survives"] for correction in corrected)
    for rank, index in enumerate(order):
        steps = len(p_values) - rank if corrected[index]["holm_survives"] else failing_steps
        corrected[index]["holm_confidence"] = 1 - alpha / steps
    return corrected
