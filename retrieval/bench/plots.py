"""Figures of the E1-E7 benchmark (matplotlib, Agg backend): mAP bars per split, the v-sweep curves of
the re-rankers, and query grids (query + top-10, green border = relevant, red = not, grey = junk)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from retrieval.fileio import atomic_path

PathLike = Union[str, os.PathLike]

__all__ = ["bar_chart", "v_sweep_plot", "query_grid", "subplots", "save_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subplots(*args, **kwargs):
    """``plt.subplots(*args, **kwargs)`` on the Agg backend: ``(fig, axes)``; finish with
    :func:`save_figure`."""
    return _pyplot().subplots(*args, **kwargs)


def save_figure(fig, path: PathLike, dpi: int, fmt: Optional[str] = None) -> Path:
    """Lay ``fig`` out (``tight_layout``), save it to ``path`` at ``dpi`` atomically (a temporary file
    renamed over ``path``, its folder created) and close it; returns ``Path(path)``. The format is
    ``fmt``, else the suffix of ``path``, else matplotlib's default with its suffix appended to the
    name (as ``savefig`` does)."""
    plt = _pyplot()
    fig.tight_layout()
    target = Path(path)
    if fmt is None:
        fmt = target.suffix[1:] or plt.rcParams["savefig.format"]
        if not target.suffix:
            target = target.with_name(f"{target.name.rstrip('.')}.{fmt}")
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
    finally:
        plt.close(fig)
    return Path(path)


def bar_chart(rows: Sequence[dict], path: PathLike) -> Path:
    """One panel per dataset: grouped bars, experiments on the x axis, one bar per split (value in %)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = [r for r in rows if r["dataset"] == dataset]
        exps = list(dict.fromkeys(r["experiment"] for r in sub))
        splits = list(dict.fromkeys(r["split"] for r in sub))
        width = 0.8 / len(splits)
        metric = next(iter(sub[0]["metrics"]))
        for j, split in enumerate(splits):
            vals = [next((r["metrics"][metric] for r in sub if r["experiment"] == e and r["split"] == split),
                         np.nan) for e in exps]
            x = np.arange(len(exps)) + (j - (len(splits) - 1) / 2) * width
            bars = ax.bar(x, vals, width, label=split)
            for b, v in zip(bars, vals):
                if v == v:
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(np.arange(len(exps)))
        ax.set_xticklabels(exps)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(dataset)
        finite = [r["metrics"][metric] for r in sub if r["metrics"][metric] == r["metrics"][metric]]
        if finite:
            lo = max(0.0, min(finite) - 10)
            ax.set_ylim(lo, min(100.0, max(finite) + 5))
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=120)


def v_sweep_plot(sweeps: Mapping[str, Mapping[str, Mapping[str, Mapping[float, float]]]], path: PathLike,
                 chosen: Optional[Mapping[str, Mapping[str, Mapping[str, float]]]] = None) -> Path:
    """``sweeps[dataset][experiment][split][v] = mAP`` (fraction): one panel per (dataset, experiment),
    one curve per split. v = 1 is the global ranking, v = 0 the local score alone. ``chosen[dataset]
    [experiment][split]``: the cross-fitted v of that split, marked with a star on its curve."""
    panels = [(d, e) for d, by_e in sweeps.items() for e in by_e]
    n = max(1, len(panels))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, (d, e) in zip(axes.ravel(), panels):
        for split, curve in sweeps[d][e].items():
            vs = sorted(curve)
            line, = ax.plot(vs, [100 * curve[v] for v in vs], marker="o", ms=3, label=split,
                            lw=2.0 if split == "all" else 1.2)
            v_star = ((chosen or {}).get(d, {}).get(e, {}) or {}).get(split)
            if v_star is not None and v_star in curve:
                ax.plot([v_star], [100 * curve[v_star]], marker="*", ms=12, color=line.get_color(),
                        markeredgecolor="black", zorder=5)
        ax.set_title(f"{e} on {d} (star: cross-fitted v)", fontsize=9)
        ax.set_xlabel("v (weight of the global score)")
        ax.set_ylabel("mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    return save_figure(fig, path, dpi=120)


def _framed(ax, image: np.ndarray, colour: Optional[str], title: str = "") -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
    if title:
        ax.set_title(title, fontsize=7)


def query_grid(dataset, predictions: Mapping[str, Sequence[str]], path: PathLike, n_queries: int = 4,
               top: int = 10, title: str = "", seed: int = 0, thumb: int = 160) -> Path:
    """A grid: per row one query (cropped to its box when it has one) and its ``top`` results, bordered
    green (relevant), red (not relevant) or grey (junk, ignored by the metric). Queries: ``n_queries``
    scored ones picked with ``default_rng(seed)``, in dataset order."""
    from retrieval.datasets.oxford import crop_query
    from retrieval.imageio import load_image

    scored = [i for i, q in enumerate(dataset.query_ids)
              if q in predictions and dataset.ground_truth.get(q) is not None
              and dataset.ground_truth[q].usage != "Ignored" and dataset.ground_truth[q].positives]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(scored, size=min(n_queries, len(scored)), replace=False).tolist()) if scored else []
    db_path = dict(zip((str(i) for i in dataset.db_ids), dataset.db_paths))
    fig, axes = subplots(max(1, len(pick)), top + 1, figsize=(1.3 * (top + 1), 1.45 * max(1, len(pick))),
                         squeeze=False)
    for r, qi in enumerate(pick):
        qid = dataset.query_ids[qi]
        truth = dataset.ground_truth[qid]
        image = load_image(dataset.query_paths[qi])
        if dataset.query_boxes is not None and dataset.query_boxes[qi] is not None:
            image = crop_query(image, dataset.query_boxes[qi])
        from retrieval.imageio import resize_longest_side

        _framed(axes[r, 0], resize_longest_side(image, thumb), "blue", "query")
        ranked = [str(x) for x in predictions[qid]][:top]
        for c in range(top):
            ax = axes[r, c + 1]
            if c >= len(ranked):
                ax.axis("off")
                continue
            did = ranked[c]
            colour = "green" if did in truth.positives else ("grey" if did in truth.junk else "red")
            _framed(ax, load_image(db_path[did], max_side=thumb), colour, f"{c + 1}")
    if title:
        fig.suptitle(title + "  (green: relevant, red: not, grey: junk)", fontsize=9)
    return save_figure(fig, path, dpi=100)
