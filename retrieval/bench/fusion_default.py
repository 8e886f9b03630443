"""The fusion applied without ground truth (:data:`retrieval.rerank.fusion.DEFAULT_FUSION`), measured.

Where no ground truth can choose a fusion (``retrieval rerank`` on a ranking, ``retrieval serve`` on new
queries) one fixed setting per kind of local score is applied. It is chosen here from the experiments'
own measurements: every results folder of the E1-E8 ladder (``candidate_means``) or of ``retrieval run``
(``choices[].mean_by_candidate``) holds each fusion candidate's mean over all queries, for every
re-ranker and relevance protocol. For each kind (counts: ratio test, spatial verification;
similarities: VLAD, patch tokens) the linear candidates are compared by their gain over "no
re-ranking" on every (data set, protocol, re-ranker); the pick is the best worst-case gain (then the
best mean gain): a default must not hurt any set we hold, since nothing checks it where it is used.
Linear only, so that the page's v slider can show it.

    python benchmarks/fusion_default.py results/e1_e7 [more results folders] [--out DIR]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["collect", "pick", "main", "BASE"]

BASE = "none (global order)"
COUNT_RERANKERS = ("E5", "SV")
SIMILARITY_RERANKERS = ("E6", "E7")


def collect(folder: Path) -> List[dict]:
    """``[{"source", "relevance", "reranker", "kind", "means": {label: mean}}]`` of one results folder."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run the experiment first)")
    payload = json.loads(path.read_text())
    out = []
    for relevance, by_exp in (payload.get("candidate_means") or {}).items():
        for exp, means in by_exp.items():
            kind = "count" if exp in COUNT_RERANKERS else "similarity" if exp in SIMILARITY_RERANKERS else None
            if kind:
                out.append({"source": str(folder), "relevance": relevance, "reranker": exp, "kind": kind,
                            "means": means})
    for choice in payload.get("choices") or []:
        means = choice.get("mean_by_candidate") or {}
        if BASE not in means:
            continue   # an expansion (E8), not a fusion
        scorer = choice["method"].rsplit(" + ", 1)[-1].split(" ", 1)[0]
        kind = "count" if scorer in ("spatial", "ratio") else "similarity"
        out.append({"source": str(folder), "relevance": choice.get("protocol", ""), "reranker": scorer,
                    "kind": kind, "means": means})
    if not out:
        raise ValueError(f"{path}: no per-candidate means (results of an older version? run it again)")
    return out


def pick(entries: Sequence[dict], kind: str) -> dict:
    """The linear candidate of ``kind`` with the best worst-case gain over the base ranking (ties: the
    best mean gain), and the table of every candidate's gains (mAP points)."""
    entries = [e for e in entries if e["kind"] == kind]
    if not entries:
        raise ValueError(f"no {kind} re-ranker in the results")
    labels = set.intersection(*(set(e["means"]) for e in entries))
    labels = sorted(label for label in labels if label.startswith("linear "))
    if not labels:
        raise ValueError(f"no linear {kind} candidate common to every result")
    rows = []
    for label in labels:
        gains = [e["means"][label] - e["means"][BASE] for e in entries]   # percent: mAP points
        rows.append({"candidate": label, "worst_gain": min(gains), "mean_gain": sum(gains) / len(gains),
                     "gains": gains})
    rows.sort(key=lambda r: (-r["worst_gain"], -r["mean_gain"]))
    return {"kind": kind, "picked": rows[0]["candidate"], "rows": rows,
            "columns": [f"{e['reranker']} @ {e['relevance']}" for e in entries]}


def table(result: dict, top: int = 8) -> str:
    """Markdown of the ``top`` candidates of one :func:`pick`."""
    head = "| candidate | worst gain | mean gain | " + " | ".join(result["columns"]) + " |"
    lines = [f"**{result['kind']}** (gain over no re-ranking, mAP points; picked: `{result['picked']}`)", "",
             head, "|---" * (3 + len(result["columns"])) + "|"]
    for r in result["rows"][:top]:
        lines.append(f"| {r['candidate']} | {r['worst_gain']:+.2f} | {r['mean_gain']:+.2f} | "
                     + " | ".join(f"{g:+.2f}" for g in r["gains"]) + " |")
    return "\n".join(lines)


def main(folders: Sequence[str], out: Optional[str] = None) -> Dict[str, dict]:
    """Pick the default of each kind from ``folders``; prints the tables, writes ``fusion_default.json``
    (and ``.md``) into ``out`` when given; returns ``{kind: pick}``."""
    from retrieval.core.fileio import atomic_write_text

    entries = [e for f in folders for e in collect(Path(f))]
    picks = {kind: pick(entries, kind) for kind in ("count", "similarity")
             if any(e["kind"] == kind for e in entries)}
    text = "\n\n".join(table(p) for p in picks.values())
    print(text)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "fusion_default.json", json.dumps(picks, indent=1) + "\n")
        atomic_write_text(Path(out) / "fusion_default.md", text + "\n")
    return picks
