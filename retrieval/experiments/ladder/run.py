"""The ladder experiment (kind ``ladder``): ``main(conf, out_dir, cache_dir=None) -> Path`` runs the
object half, then the landmark half, and writes results.json, results.md and the figures."""
from __future__ import annotations

import os
import time
from pathlib import Path

from retrieval.experiments.ladder.settings import LadderConfig, with_dataset
from retrieval.experiments.ladder.stages import RunCache

__all__ = ["CONFIG", "main", "DEFAULT_CACHE", "apply_dataset"]

#: how ``--dataset KIND --data PATH`` apply to the ladder (retrieval.experiments.files.apply_dataset_options)
apply_dataset = with_dataset

CONFIG = LadderConfig
DEFAULT_CACHE = Path("cache/e1_e7")


def main(conf: LadderConfig, out_dir, cache_dir=None) -> Path:
    """Run the ladder of ``conf`` (resumable: everything computed is kept under ``cache_dir``, default
    ``cache/e1_e7``, in ``full/`` or ``quick/``) and write the results into ``out_dir``; returns it."""
    import torch

    from retrieval.core.report import pct, peak_rss_mb, write_results

    from retrieval.experiments.ladder import plots
    from retrieval.experiments.ladder.ladder import run_landmark, run_object
    from retrieval.experiments.ladder.tables import summary_table, sweep_curves, sweep_table

    conf = LadderConfig.from_dict(conf) if isinstance(conf, dict) else conf
    cache_root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    cache = RunCache(cache_root / ("quick" if conf.quick else "full"), recompute=conf.recompute, n_jobs=conf.n_jobs,
                     progress=conf.progress, device=conf.device, backend=conf.backend,
                     engine=conf.engine, ray_address=conf.ray_address)
    _announce_estimate(conf, cache)
    start = time.perf_counter()
    halves = []
    if conf.object.enabled:
        halves.append((run_object(conf, cache), "E4"))
    if conf.landmark.enabled:
        halves.append((run_landmark(conf, cache), "E1"))
    wall = time.perf_counter() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, bases, sweeps, chosen, deployed, means = [], {}, {}, {}, {}, {}
    figures = []
    for half, base in halves:
        rows += half.rows
        for r in half.relevances:
            bases[r.name] = base
            sweeps[r.name] = {e: sweep_curves(c) for e, c in half.choices.get(r.name, {}).items()}
            chosen[r.name] = {e: c.fit["chosen"] for e, c in half.choices.get(r.name, {}).items()}
            deployed[r.name] = {e: c.deployed for e, c in half.choices.get(r.name, {}).items()}
            means[r.name] = {e: {str(k): pct(v) for k, v in c.fit["curves"]["all"].items()}
                             for e, c in half.choices.get(r.name, {}).items()}
        figures += _failure_grids(half, base, conf, out)
    figures = [plots.bar_chart(rows, out / "map_bars.png"), plots.v_sweep_plot(sweeps, out / "v_sweep.png", chosen)] + figures
    summary = summary_table(rows, bases)
    precision, precision_md = _revisited_precision(halves)
    sweep_md = (precision_md + "\n\n" if precision_md else "") + sweep_table(sweeps)
    object_root = next((str(h.dataset.root) for h, base in halves if base == "E4"), None)
    extra = {
        # chosen: per fold (the held-out figures); deployed: chosen on all queries, for new queries (serve)
        "config": conf.to_dict(), "chosen": chosen, "deployed": deployed,
        # each candidate's mean over all queries (benchmarks/fusion_default.py: the default without ground truth)
        "candidate_means": means,
        # the revisited benchmark's mP@10 of every rung's reported predictions (%), beside its mAP rows
        "revisited_mp@10": precision,
        # where the run's cache and GLDv2-format data are (retrieval serve opens E4's features from them)
        "options": {"cache": str(cache_root), "quick": conf.quick, "gldv2": object_root},
        "v_sweeps": {d: {e: {s: {str(v): c[v] for v in c} for s, c in by_s.items()} for e, by_s in by_e.items()}
                     for d, by_e in sweeps.items()},
        "stage_seconds": cache.timer.seconds, "stage_seconds_this_run": cache.timer.this_run,
        "wall_seconds_this_run": wall, "peak_rss_mb": peak_rss_mb(), "quick": conf.quick,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "figures": [str(f) for f in figures],
    }
    names = " and ".join(h.name for h, _ in halves)
    title = f"The E1-E8 ladder on {names}" + (" (quick)" if conf.quick else "")
    metric_cols = list(dict.fromkeys(f"metrics.{m}" for r in rows for m in r["metrics"]))
    long_table = write_results(rows, out, columns=["experiment", "dataset", "split", *metric_cols, "chosen",
                                                   "seconds", "note"], title=title, extra=extra)
    stage_lines = "\n".join(f"| {k} | {v:.1f} |" for k, v in cache.timer.this_run.items())
    text = (f"## {title}\n\n{summary}\n\n{sweep_md}\n\n**Stages this run** (s)\n\n| stage | seconds |\n|---|---|\n"
            f"{stage_lines}\n\nwall {wall:.0f} s this run, peak RSS {peak_rss_mb():.0f} MiB, load average "
            f"{extra['load_average']}\n")
    from retrieval.core.fileio import atomic_write_text

    atomic_write_text(out / "results.md", text + "\n### All rows\n\n" + long_table + "\n")
    print(text)
    return out


def _announce_estimate(conf: LadderConfig, cache: RunCache) -> None:
    """Print the run's estimated cost, then an ETA after each stage (:mod:`.eta`)."""
    from retrieval.experiments.ladder.eta import LadderEta, expected_stages
    from retrieval.experiments.ladder.stages import say

    measured = dict(cache.timer.seconds)
    eta = LadderEta(expected_stages(conf.object.enabled, conf.landmark.enabled, conf.rerankers, conf.quick, measured),
                    say=say)
    say(eta.start_line(measured))
    cache.timer.listeners.append(eta.stage_done)


def _revisited_precision(halves) -> tuple:
    """``({relevance: {rung: mP@10 %}}, markdown)`` of the revisited relevances (the benchmark reports
    mP@10 beside mAP): each rung's reported predictions, each level's positives and ignored images."""
    from retrieval.evaluation.metrics import oxford_precision_at_k
    from retrieval.core.report import pct

    out = {}
    for half, _ in halves:
        for r in half.relevances:
            if "revisited" not in r.name:
                continue
            truth = r.dataset.ground_truth
            out[r.name] = {}
            for exp, preds in half.predictions.get(r.name, {}).items():
                values = [oxford_precision_at_k(preds.get(q, []), t.positives, t.junk, 10)
                          for q, t in truth.items() if t.positives]
                out[r.name][exp] = pct(sum(values) / len(values)) if values else float("nan")
    if not out:
        return out, ""
    rungs = list(dict.fromkeys(e for by_exp in out.values() for e in by_exp))
    lines = ["**Revisited mP@10** (%, the rungs' reported rankings)", "",
             "| relevance | " + " | ".join(rungs) + " |", "|---" * (len(rungs) + 1) + "|"]
    for name, by_exp in out.items():
        lines.append(f"| {name.split(' (')[0]} | " + " | ".join(f"{by_exp.get(e, float('nan')):.2f}" for e in rungs) + " |")
    return out, "\n".join(lines)


def _failure_grids(half, base: str, conf: LadderConfig, out: Path):
    """A failure grid per relevance protocol, of the last re-ranker reported (else the base rung),
    scores = the base rung's global cosine."""
    from retrieval.experiments.ladder import plots

    figures = []
    if conf.n_query_figures <= 0:
        return figures
    for r in half.relevances:
        choices = half.choices.get(r.name, {})
        exp = "SV" if "SV" in choices else (next(reversed(choices)) if choices else base)
        preds = half.predictions[r.name][exp]
        per_q = choices[exp].per_query if exp in choices else r.per_query(preds)
        figures.append(plots.failure_grid(half.dataset, r.dataset, preds, per_q,
                                          out / plots.query_figure_name(r.name, r.protocol),
                                          n_queries=conf.n_query_figures, title=f"{r.name}: {exp} top-10",
                                          score=half.score))
    return figures
