"""The re-ranking stages of the ``retrieval`` experiment (:mod:`retrieval.experiments.chain`): local
re-ranking (``[rerank]``) and query expansion / database-side augmentation (``[expand]``, the E8
rungs), each chosen on held-out queries by :mod:`retrieval.steps.choose` exactly as the E1-E8 ladder
chooses them, or applied at a fixed setting.

Each stage returns :class:`StageResult` rows: one per relevance protocol of the dataset when the
setting was chosen (each protocol chooses for itself, as the ladder does: the figure reported under a
protocol was chosen under that protocol on other queries), one row when it was fixed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from retrieval.core.config import ConfigError
from retrieval.core.report import StageTimer

__all__ = ["StageResult", "Context", "rerank_stage", "expand_stage", "key", "stage_entry"]


def key(*parts: Any) -> str:
    """A short digest of settings, used in cache folder names (other settings never mix in)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class StageResult:
    """One reported row: ``method`` (table name), its ``predictions``, the ``protocol`` it was chosen
    under (None: fixed setting, scored under every protocol) and the JSON-able ``report``."""

    method: str
    predictions: Dict[str, List[str]]
    protocol: Optional[str] = None
    report: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What the stages share: the experiment's settings, the opened dataset, its kind, the cache folder of
    the data, the run folder, the base ranking file, the relevance protocols, the query groups, whether
    to show progress, the stage timer and the results.json ``stages`` entries."""

    conf: Any
    ds: Any
    kind: str
    data_dir: Path
    run_dir: Path
    ranking: Path
    relevances: list
    groups: Dict[str, str]
    progress: bool
    timer: StageTimer
    stages: Dict[str, Any]


def _choose(ctx: Context, name: str, candidates: Dict[str, object], rankings, min_gain: float) -> List[StageResult]:
    from retrieval.steps.choose import choose

    choices = choose(name, candidates, rankings, ctx.relevances, ctx.groups, min_gain)
    out = []
    for r in ctx.relevances:
        c = choices[r.name]
        out.append(StageResult(f"{name} (chosen on {r.protocol})", c.predictions, r.protocol,
                               {**c.report(), "protocol": r.protocol, "metric": r.metric}))
    return out


# ------------------------------------------------------------------------------------------ rerank

def rerank_stage(ctx: Context, method: str, both) -> List[StageResult]:
    """``[rerank]``: local features of the scorer for the queries and the shortlisted database images
    (``both(kind, config, dataset, folder)`` extracts them, resumable), their scores on the shortlist
    (cached once for every fusion), then the fusion chosen on held-out queries or the fixed one."""
    from retrieval.steps.rerank import fused_ranking, local_features_for, score_kind, shortlist_scores

    r = ctx.conf.rerank
    local_kind = "patch" if r.scorer == "patch" else "local"
    local_config = local_features_for(r, ctx.kind)
    ext = ctx.conf.extract
    if ext.kind == "local" and local_kind == "local" and local_config == ext.config and not ext.overrides:
        local_dir = ctx.data_dir / f"{ext.kind}-{ext.config}-{key(ext.to_dict())}"   # the features searched
    else:
        local_dir = ctx.data_dir / f"{local_kind}-{local_config}"
    local_dir.mkdir(parents=True, exist_ok=True)
    # only the database images some query will score need local features (at GLDv2 size a fraction of
    # the index); the VLAD scorer learns its codebook from the whole database, so it keeps it all
    scored = ctx.ds if r.scorer == "vlad" else _shortlisted(ctx.ds, ctx.ranking, r.shortlist)
    with ctx.timer("rerank local features"):
        db_local, q_local = both(local_kind, local_config, scored, local_dir)
    ctx.stages["rerank local features"] = stage_entry(ctx.timer.this_run["rerank local features"],
                                                 len(scored.db_ids) + len(ctx.ds.query_ids), db_local,
                                                 note="database images in a shortlist, and the queries; "
                                                      "cached features cost no time")
    with ctx.timer("rerank scoring"):
        base, shortlist, local = _local_scores(ctx, local_dir, db_local, q_local)
    ctx.stages["rerank scoring"] = stage_entry(ctx.timer.this_run["rerank scoring"], len(ctx.ds.query_ids),
                                          note=f"per query: top {r.shortlist}; cached scores cost no time")
    kind = score_kind(r)
    name = f"{method} + {r.scorer} ({local_config})"
    if not r.fusion.chooses(has_ground_truth=bool(ctx.ds.ground_truth)):
        applied = r.fusion.resolve(kind)
        preds = fused_ranking(base, shortlist, local, applied).to_predictions()
        return [StageResult(f"{name} [{applied.label}]", preds, None, {"fusion": applied.to_dict()})]
    candidates = {c.label: c for c in r.fusion.candidates(kind)}
    fused = {}

    def rankings(cand):
        if cand.label not in fused:
            fused.clear()
            fused[cand.label] = fused_ranking(base, shortlist, local, cand).to_predictions()
        return fused[cand.label]

    with ctx.timer("rerank choice"):
        rows = _choose(ctx, name, candidates, rankings, r.fusion.min_gain)
    for row in rows:
        row.report["deployed_fusion"] = candidates[row.report["deployed"]].to_dict()
    return rows


def _local_scores(ctx: Context, local_dir: Path, db_local: Path, q_local: Path):
    """``(base ranking, shortlist, local scores)`` of the ``[rerank]`` scorer (VLAD: its codebook
    learned, or reused, on the database's local features first)."""
    from retrieval.steps import encode
    from retrieval.steps.encode import EncodeConfig
    from retrieval.steps.rerank import shortlist_scores

    r = ctx.conf.rerank
    model = None
    if r.scorer == "vlad":
        model = local_dir / "vlad-64.npz"
        from retrieval.features.encoders.named import ENCODER_CONFIGS

        # learn (or reuse) the VLAD codebook on the database's local features
        encode.main(EncodeConfig(encoder=ENCODER_CONFIGS.get("vlad-64")), db_local, local_dir / "db-vlad.h5",
                    model=model, progress=ctx.progress)
    scoring = {k: v for k, v in r.to_dict().items() if k != "fusion"}
    return shortlist_scores(r, ctx.ranking, q_local, db_local, ctx.run_dir / f"shortlist-{key(scoring)}", model,
                            ctx.progress)


def _shortlisted(ds, ranking: Path, shortlist: int):
    """``ds`` with its database cut to the images in some query's top ``shortlist`` (dataset order)."""
    from retrieval.indexing.index import Ranking

    wanted = {str(i) for i in Ranking.load(ranking).ids[:, :shortlist].ravel().tolist()}
    keep = [j for j, i in enumerate(ds.db_ids) if str(i) in wanted]
    take = lambda xs: None if xs is None else [xs[j] for j in keep]  # noqa: E731
    return replace(ds, db_ids=take(ds.db_ids), db_paths=take(ds.db_paths), db_labels=take(ds.db_labels),
                   db_metadata={k: take(v) for k, v in ds.db_metadata.items()})


# ------------------------------------------------------------------------------------------ expand

def expand_stage(ctx: Context, method: str, db_file: Path, q_file: Path) -> List[StageResult]:
    """``[expand]``: alpha-QE / DBA / both of the global vectors (:mod:`retrieval.steps.expand`), each
    mode a re-ranker of its own over the (n, alpha) grid, chosen on held-out queries (the base ranking
    first, the same margin as the fusions)."""
    from retrieval.features.store import load_global
    from retrieval.steps.expand import expansion_candidates, expansion_rankings

    x = ctx.conf.expand
    if not ctx.ds.ground_truth:
        raise ConfigError("[expand] chooses n and alpha on held-out queries: the dataset needs ground truth")
    vectors = []
    for path, ids in ((db_file, ctx.ds.db_ids), (q_file, ctx.ds.query_ids)):
        got, v, _ = load_global(path)
        row = {i: n for n, i in enumerate(got)}
        vectors.append(v[[row[str(i)] for i in ids]])
    from retrieval.indexing.index import Ranking

    k = Ranking.load(ctx.ranking).k
    rows: List[StageResult] = []
    with ctx.timer("expand"):
        for mode in x.modes:
            rankings = expansion_rankings(mode, vectors[0], vectors[1], ctx.ds.db_ids, ctx.ds.query_ids, k)
            rows += _choose(ctx, f"{method} + {mode}", expansion_candidates(x), rankings, x.min_gain)
    ctx.stages["expand"] = stage_entry(ctx.timer.this_run["expand"], len(ctx.ds.query_ids),
                                  note=f"{len(x.modes)} modes x {len(x.n) * len(x.alpha)} settings, exact search")
    return rows


def stage_entry(seconds, images, output: Optional[Path] = None, **more) -> Dict[str, Any]:
    """A results.json ``stages`` entry: seconds, per image, and the bytes per image of its output."""
    out: Dict[str, Any] = {"seconds": None if seconds is None else round(float(seconds), 3), "images": images, **more}
    if seconds is not None and images:
        out["seconds_per_image"] = float(seconds) / images
    if output is not None and Path(output).is_file() and images:
        out["bytes_per_image"] = Path(output).stat().st_size / images
    return out
