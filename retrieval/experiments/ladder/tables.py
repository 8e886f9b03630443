"""The ladder's results as rows and markdown tables: one table per (dataset, relevance protocol), a
column per cross-fitting group, the gain over the base rung, what was chosen for each group; and
the v-sweep of each fused re-ranker."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from retrieval.core.report import pct

__all__ = ["result_rows", "summary_table", "sweep_curves", "sweep_table"]


def result_rows(experiment: str, dataset: str, split_scores: Mapping[str, float], metric: str,
                chosen: Optional[Mapping[str, str]] = None, seconds: Optional[float] = None,
                note: str = "") -> List[dict]:
    """One row per split: ``{"experiment", "dataset", "split", "metrics": {metric: %}, "chosen",
    "seconds", "note"}``; ``chosen``: the cross-fitted setting of each split (None for global rungs);
    the "all" row joins them."""
    rows = []
    for split, value in split_scores.items():
        if chosen is None:
            text = None
        elif split in chosen:
            text = chosen[split]
        else:
            text = "; ".join(f"{g}: {chosen[g]}" for g in sorted(chosen))
        rows.append({"experiment": experiment, "dataset": dataset, "split": split,
                     "metrics": {metric: pct(value)}, "chosen": text,
                     "seconds": None if seconds is None else round(float(seconds), 1), "note": note})
    return rows


def summary_table(rows: Sequence[dict], bases: Optional[Mapping[str, str]] = None) -> str:
    """Markdown: per dataset a table, one line per experiment, a column per split (metric in %), the
    gain of "all" over the dataset's base rung (``bases[dataset]``, e.g. E4), the choices and seconds."""
    order: List[Tuple[str, str]] = []
    cells: Dict[Tuple[str, str], dict] = {}
    splits: Dict[str, List[str]] = {}
    for r in rows:
        key = (r["dataset"], r["experiment"])
        if key not in cells:
            order.append(key)
            cells[key] = {"chosen": {}, "seconds": r.get("seconds"), "note": r.get("note", "")}
        metric, value = next(iter(r["metrics"].items()))
        cells[key]["metric"] = metric
        cells[key][r["split"]] = value
        if r["split"] != "all" and r.get("chosen") is not None:
            cells[key]["chosen"][r["split"]] = r["chosen"]
        cols = splits.setdefault(r["dataset"], [])
        if r["split"] not in cols:
            cols.append(r["split"])
    lines = []
    for dataset in dict.fromkeys(d for d, _ in order):
        cols = splits[dataset]
        metric = next(cells[k]["metric"] for k in order if k[0] == dataset)
        base = (bases or {}).get(dataset)
        base_all = cells.get((dataset, base), {}).get("all") if base else None
        lines.append(f"\n**{dataset}** ({metric}, %)\n")
        lines.append("| experiment | " + " | ".join(cols) + f" | vs {base or 'base'} | chosen per split "
                     "(cross-fitted on the other split) | seconds | note |")
        lines.append("|---|" + "---|" * len(cols) + "---|---|---|---|")
        for key in order:
            if key[0] != dataset:
                continue
            c = cells[key]
            vals = [f"{c[s]:.2f}" if isinstance(c.get(s), float) and c[s] == c[s] else "-" for s in cols]
            gain = "-" if base_all is None or key[1] in ("E1", "E2", "E3", "E4") else f"{c['all'] - base_all:+.2f}"
            chosen = "; ".join(f"{s}: {v}" for s, v in c["chosen"].items()) or "-"
            sec = "-" if c["seconds"] is None else f"{c['seconds']:.0f}"
            lines.append(f"| {key[1]} | " + " | ".join(vals) + f" | {gain} | {chosen} | {sec} | {c['note']} |")
    return "\n".join(lines).strip("\n")


def sweep_curves(choice) -> Dict[str, Dict[float, float]]:
    """``{split: {v: mean AP}}`` of a fused re-ranker's linear candidates of one family (the
    normalisation and T of the chosen linear candidate, else of the best linear candidate overall),
    with v = 1 the base ranking. Empty when the re-ranker is not a fusion (E8)."""
    linear = {label: c for label, c in choice.candidates.items() if getattr(c, "method", None) == "linear"}
    if not linear:
        return {}
    curves = choice.fit["curves"]
    picked = [choice.candidates[label] for label in choice.fit["chosen"].values() if label in linear]
    if picked:
        family = (picked[0].norm, picked[0].T, picked[0].gate)
    else:
        best = max(linear, key=lambda label: curves["all"][label])
        family = (linear[best].norm, linear[best].T, linear[best].gate)
    base = next(label for label, c in choice.candidates.items() if getattr(c, "method", None) == "none")
    out = {}
    for split, by_label in curves.items():
        curve = {1.0: by_label[base]}
        for label, c in linear.items():
            if (c.norm, c.T, c.gate) == family:
                curve[float(c.v)] = by_label[label]
        out[split] = dict(sorted(curve.items()))
    return out


def sweep_table(sweeps: Mapping[str, Mapping[str, Mapping[str, Mapping[float, float]]]]) -> str:
    """Markdown of ``sweeps[dataset][experiment][split][v] = mAP`` (fraction)."""
    lines = []
    for dataset, by_exp in sweeps.items():
        vs = sorted({v for by_split in by_exp.values() for curve in by_split.values() for v in curve})
        if not vs:
            continue
        lines.append(f"\n**v-sweep, {dataset}** (%; v = 1 is the base ranking; the family of the chosen "
                     "fusion)\n")
        lines.append("| experiment | split | " + " | ".join(f"v={v:g}" for v in vs) + " |")
        lines.append("|---|---|" + "---|" * len(vs))
        for exp, by_split in by_exp.items():
            for split, curve in by_split.items():
                vals = [f"{100 * curve[v]:.2f}" if v in curve else "-" for v in vs]
                lines.append(f"| {exp} | {split} | " + " | ".join(vals) + " |")
    return "\n".join(lines).strip("\n")
