"""The ladder's figures (:func:`retrieval.core.report.subplots` / :func:`~retrieval.core.report.save_figure`):
mAP bars per split on a zero-based axis with every value printed and the legend outside the bars,
the v-sweeps of the fused re-rankers, and a grid of the queries that fail (lowest AP), each with its
AP and every result's rank, relevance and global score."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from retrieval.core.report import save_figure, subplots

PathLike = Union[str, os.PathLike]

__all__ = ["bar_chart", "v_sweep_plot", "sweep_title", "query_figure_name", "failure_grid"]


def bar_chart(rows: Sequence[dict], path: PathLike) -> Path:
    """One panel per dataset: grouped bars, experiments on the x axis, one bar per split, y from 0 to
    100 (a 0.2-point gap looks like one), each bar labelled with its value, legend above the bars."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = subplots(len(datasets), 1, figsize=(11, 3.8 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        sub = [r for r in rows if r["dataset"] == dataset]
        exps = list(dict.fromkeys(r["experiment"] for r in sub))
        splits = list(dict.fromkeys(r["split"] for r in sub))
        width = 0.8 / len(splits)
        metric = next(iter(sub[0]["metrics"]))
        for j, split in enumerate(splits):
            vals = [next((r["metrics"][metric] for r in sub if r["experiment"] == e and r["split"] == split),
                         np.nan) for e in exps]
            x = np.arange(len(exps)) + (j - (len(splits) - 1) / 2) * width
            bars = ax.bar(x, vals, width, label=split, alpha=1.0 if split == "all" else 0.6)
            for b, v in zip(bars, vals):
                if v == v:
                    ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center", va="bottom",
                            fontsize=6, rotation=90)
        ax.set_xticks(np.arange(len(exps)))
        ax.set_xticklabels(exps, fontsize=8)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(0, 112)
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=120)


def sweep_title(dataset: str, experiment: str, chosen: Optional[Mapping[str, str]] = None) -> str:
    """A v-sweep panel's title: the re-ranker, the dataset and the fusion chosen per split (the
    curves are of the chosen fusion's family; ``chosen``: ``{split: candidate label}``)."""
    import textwrap

    title = f"{experiment}, {dataset}"
    if chosen:
        text = "; ".join(f"{split}: {label}" for split, label in chosen.items())
        title += "\n" + "\n".join(textwrap.wrap(f"chosen: {text}", 64))
    return title


def v_sweep_plot(sweeps: Mapping[str, Mapping[str, Mapping[str, Mapping[float, float]]]], path: PathLike,
                 chosen: Optional[Mapping[str, Mapping[str, Mapping[str, str]]]] = None) -> Path:
    """``sweeps[dataset][experiment][split][v] = mAP``: one panel per (dataset, experiment), one curve
    per split; v = 1 is the base ranking. ``chosen[dataset][experiment]`` (``{split: label}``) names
    the fusion chosen per split in the panel's title."""
    panels = [(d, e) for d, by_e in sweeps.items() for e, by_s in by_e.items() if by_s]
    n = max(1, len(panels))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = subplots(nrows, cols, figsize=(4.8 * cols, 3.4 * nrows), squeeze=False)
    for ax, (d, e) in zip(axes.ravel(), panels):
        for split, curve in sweeps[d][e].items():
            vs = sorted(curve)
            ax.plot(vs, [100 * curve[v] for v in vs], marker="o", ms=3, label=split, lw=2.0 if split == "all" else 1.2)
        ax.set_title(sweep_title(d, e, (chosen or {}).get(d, {}).get(e)), fontsize=7)
        ax.set_xlabel("v (weight of the base score)")
        ax.set_ylabel("mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    return save_figure(fig, path, dpi=110)


def query_figure_name(relevance_name: str, protocol: str) -> str:
    """``queries_<dataset>_<protocol>.png``: Oxford's official protocol is "official", the landmark-level
    one "landmark", any other (GLDv2's, on COIL-100 too) by its own name."""
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in relevance_name.split(" (")[0])
    return f"queries_{slug}_{ {'oxford': 'official', 'landmark': 'landmark'}.get(protocol, protocol)}.png"


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
        ax.set_title(title, fontsize=6)


def failure_grid(dataset, relevance_dataset, predictions: Mapping[str, Sequence[str]],
                 per_query_ap: Mapping[str, float], path: PathLike, n_queries: int = 4, top: int = 10,
                 title: str = "", score: Optional[Callable[[str, str], float]] = None, thumb: int = 150) -> Path:
    """The ``n_queries`` queries with the lowest AP (the failures), one per row: the query (cropped to
    its box) titled with its AP, then its ``top`` results bordered green (relevant), red (not) or
    grey (junk), each titled with its rank and ``score(query, image)`` (e.g. the global cosine)."""
    from retrieval.datasets.oxford import crop_query
    from retrieval.core.imageio import load_image, resize_longest_side

    truth_of = relevance_dataset.ground_truth
    scored = [q for q in dataset.query_ids if q in predictions and q in per_query_ap
              and truth_of.get(q) is not None and truth_of[q].positives]
    pick = sorted(scored, key=lambda q: (per_query_ap[q], str(q)))[:n_queries]
    position = {q: i for i, q in enumerate(dataset.query_ids)}
    db_path = dict(zip((str(i) for i in dataset.db_ids), dataset.db_paths))
    fig, axes = subplots(max(1, len(pick)), top + 1, figsize=(1.3 * (top + 1), 1.55 * max(1, len(pick))),
                         squeeze=False)
    for r, qid in enumerate(pick):
        qi = position[qid]
        truth = truth_of[qid]
        image = load_image(dataset.query_paths[qi])
        if dataset.query_boxes is not None and dataset.query_boxes[qi] is not None:
            image = crop_query(image, dataset.query_boxes[qi])
        _framed(axes[r, 0], resize_longest_side(image, thumb), "blue", f"{qid}\nAP {100 * per_query_ap[qid]:.1f}")
        ranked = [str(x) for x in predictions[qid]][:top]
        for c in range(top):
            ax = axes[r, c + 1]
            if c >= len(ranked):
                ax.axis("off")
                continue
            did = ranked[c]
            colour = "green" if did in truth.positives else ("grey" if did in truth.junk else "red")
            label = f"#{c + 1}" + (f" s={score(qid, did):.2f}" if score is not None else "")
            _framed(ax, load_image(db_path[did], max_side=thumb), colour, label)
    if not pick:
        axes[0, 0].text(0.5, 0.5, "no scored query", ha="center")
    fig.suptitle((title + ": " if title else "") + "the lowest-AP queries (green: relevant, red: not, grey: junk; "
                 "s: global cosine)", fontsize=8)
    return save_figure(fig, path, dpi=100)
