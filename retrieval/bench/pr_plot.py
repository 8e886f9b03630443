"""The precision-recall figure every protocol can draw: one curve per model / split from
:func:`retrieval.evaluation.metrics.precision_recall_curve` (interpolated precision at fixed recall levels)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Union

__all__ = ["plot_pr_curves"]


def plot_pr_curves(curves: Mapping[str, Mapping[str, list]], path: Union[str, os.PathLike],
                   title: str = "precision-recall") -> Path:
    """``curves[label] = {"recall": [...], "precision": [...]}`` -> one PNG (Agg, atomic)."""
    from retrieval.core.report import save_figure, subplots

    if not curves:
        raise ValueError("no precision-recall curves to plot")
    fig, axes = subplots(1, 1, figsize=(5.5, 4.2), squeeze=False)
    ax = axes[0][0]
    for label, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], marker=".", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path, dpi=100)
