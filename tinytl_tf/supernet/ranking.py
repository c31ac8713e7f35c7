"""Rank correlations (Spearman, Kendall tau-b) of predicted against measured accuracies: how the search judges a
ranker, since what matters for choosing sub-nets is the order it puts them in. TF-free, so reports can use it."""

import numpy as np


def _ranks(values):
    """Ranks 1..n with ties sharing their average rank (as Spearman's coefficient needs)."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b):
    """Spearman's rank correlation; None when undefined (fewer than 2 pairs or a constant side)."""
    ra, rb = _ranks(a), _ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall(a, b):
    """Kendall's tau-b (tie-corrected); None when undefined."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    upper = np.triu_indices(len(a), k=1)
    da = np.sign(a[:, None] - a[None, :])[upper]
    db = np.sign(b[:, None] - b[None, :])[upper]
    denominator = np.sqrt(np.count_nonzero(da) * np.count_nonzero(db))
    return float(np.sum(da * db) / denominator) if denominator else None


def rank_correlations(predicted, measured):
    """{"spearman", "kendall", "pairs"} of predicted against measured accuracies."""
    return {"spearman": spearman(predicted, measured), "kendall": kendall(predicted, measured), "pairs": len(measured)}
