"""The experiment ladder E1-E7 on GLDv2-format data, then the Oxford subset, in one command.

Experiments (global descriptor: EfficientNet-Lite0, GeM p = 3, L2; exact cosine search):

* E1  ImageNet Lite0, no training;
* E2  fine-tuned with a classification head on the training images (``<family>-e2``, e.g. ``coil-e2``);
* E3  Siamese (contrastive, P x K batches) from ImageNet (``<family>-e3``);
* E4  Siamese from the E2 model (``<family>-e4``);
* E5  E4's top-100 re-ranked with the SIFT ratio-test score (RootSIFT, :class:`rerank.ratio.RatioTestScorer`);
* E6  E4's top-100 re-ranked with the VLAD similarity (RootSIFT VLAD, k = 64 words learned on the
  training images, :class:`rerank.vlad.VladSimilarityScorer`);
* E7  E4's top-100 re-ranked with EfficientNet patch tokens of the E4 network (mean of each query
  patch's best cosine, :class:`rerank.patch.PatchScorer`).

Re-rankers fuse per query over the shortlist ``score = v * global + (1 - v) * N(local)``
(:func:`rerank.fusion.fuse`). ``N`` (:data:`FUSION_NORM`): a local score that is a cosine
similarity like the global one (VLAD, patch tokens) is fused as it is, on the same scale; the
ratio-test score, a count, is min-max normalised over the query's shortlist. (Min-max on a cosine
stretches the small differences within a shortlist to [0, 1], so any weight below 1 lets them
swamp the global order: on COIL-100 it turned E7's +0.25 into -0.04.) The fusion
weight is chosen by cross-fitting, never on the queries it is reported on: v for the Private queries
is the v in {0, 0.1, ..., 1} with the best mAP@100 on the Public queries, and v for the Public queries
the best on the Private queries (ties: the larger v, i.e. the least change to the global ranking);
the "all" figure averages each query's AP at its own split's v. The whole v-sweep per split is
reported too. Metric: Kaggle GLDv2 mAP@100 (:func:`retrieval.evaluate.evaluate_per_query`,
protocol ``gldv2``), in percent.

Oxford subset (standard protocol: queries cropped to their boxes, Oxford AP over good + ok, junk
ignored): no training data there, so only E1 (``--oxford-config``, default ``lite0-blocks-gem-ms-512``:
ImageNet Lite0, last-block feature map, GeM p = 4, scales 1, 1/sqrt2, sqrt2 at 512 px) and E5-E7
re-ranking E1's top-100 (the VLAD codebook learned unsupervised on the database images, as the
classical baselines did; patches from the ImageNet network at 512 px). v is cross-fitted over two
halves of the queries split by landmark (alternate landmarks in sorted order), same rule.

Data: ``--gldv2 PATH`` (train.csv, index.csv, test.csv, retrieval_solution_v2.1.csv, train/ index/
test/ images), or by default COIL-100 from ``--data`` exported to that format in the cache
(:func:`retrieval.datasets.coil100_gldv2_split`: train on objects 1-50, index/queries from 51-100,
every 8th view a query, half the query objects Public, half Private).

Caching and resuming (``--cache``, default ``cache/e1_e7``; ``--quick`` uses ``<cache>/quick``, the
full run ``<cache>/full``): the export, trained models (training resumes from ``last.pt``), global
feature files, local feature stores, the VLAD encoder and the shortlists with their local scores are
kept; a rerun computes only what is missing. ``--recompute`` redoes everything,
``--recompute-stage STAGE`` one stage (data, train, global, sift, vlad, patch, shortlist, oxford).
The seconds reported per experiment are its own compute seconds (kept in ``timings.json`` in the
cache, so a resumed run still reports what the stage cost when it ran); a re-ranker's seconds are its
cost on top of E4 (local features of index + queries, scoring, fusion).

Outputs (``--out``): results.json (rows: experiment, dataset, split, metrics, v, seconds; plus the
v-sweeps, stage timings, peak memory), results.md (the tables printed at the end), figures
(``map_bars.png``, ``v_sweep.png``, ``queries_<dataset>.png``).

Real GLDv2 on a GPU machine::

    python benchmarks/e1_e7.py --gldv2 /data/gldv2 --device cuda --train-config gldv2-gpu \\
        --global-config lite0-gem-512 --out results/e1_e7_gldv2 --cache cache/e1_e7_gldv2 --skip-oxford

(``--train-config gldv2-gpu`` picks ``gldv2-e2-gpu`` / ``gldv2-e3-gpu`` / ``gldv2-e4-gpu``; training
and the EfficientNet global and patch extraction run on ``--device``: on a GPU the extractor runs a
batch-norm-folded channels-last torch module there, on a CPU its fastest CPU path, ONNX Runtime.
SIFT extraction and matching stay on the CPU: give ``--n-jobs`` the machine's cores.)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["VS", "FUSION_NORM", "STAGES", "Options", "Timings", "cross_fit_v", "oxford_halves",
           "usage_groups", "result_rows", "summary_table", "sweep_table", "prepare_data", "train_models",
           "global_features", "rank", "build_shortlist", "shortlisted_images", "ladder_sift",
           "ladder_vlad_encoder", "coil_split", "run_coil", "run_oxford", "oxford_quick_subset", "run",
           "build_parser", "add_arguments", "options_from_args", "check_paths", "main",
           "quick_train_overrides", "resolve_train_config"]

#: fusion weights swept: v in 0, 0.1, ..., 1
VS: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
STAGES = ("data", "train", "global", "sift", "vlad", "patch", "shortlist", "oxford")
K_SHORTLIST = 100
METRIC = "map@100"

QUICK_COIL = dict(train_objects=range(1, 9), test_objects=range(51, 59))
FULL_COIL = dict(train_objects=range(1, 51), test_objects=range(51, 101))
COIL_SIFT = "rootsift-small"        # COIL is 128 x 128: enlarged to 256, low contrast threshold
OXFORD_SIFT = "rootsift-1k"
VLAD_WORDS = 64
PATCH_METHOD = "mean_max"
#: normalisation of each local score before fusion (module docstring)
FUSION_NORM = {"ratio": "minmax", "vlad": "none", f"patch-{PATCH_METHOD}": "none"}


def quick_train_overrides() -> Dict[str, object]:
    """Training in ``--quick``: a handful of steps on small inputs (the same code path)."""
    return {"loop.epochs": 1, "loop.max_steps_per_epoch": 3, "loop.warmup_steps": 0, "P": 4, "K": 4,
            "batch_size": 16, "image_size": 64, "loop.checkpoint_every": 0}


# --------------------------------------------------------------------------------------------------
# pure logic: cross-fitted v, rows, tables
# --------------------------------------------------------------------------------------------------

def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def cross_fit_v(per_query: Mapping[float, Mapping[Hashable, float]], groups: Mapping[Hashable, str],
                ) -> dict:
    """Choose the fusion weight of each group of queries on the OTHER groups' queries.

    ``per_query``: ``{v: {query id: AP at v}}`` (every v scoring the same queries); ``groups``:
    ``{query id: group name}`` (e.g. Public / Private). For group g,
    ``v_g = argmax_v mean_{q not in g} AP_v(q)`` (ties: the larger v). Returns ``{"v": {g: v_g},
    "per_query": {q: AP_{v_g(q)}(q)}, "score": {g: mean AP of g at v_g, "all": mean over every
    query at its group's v}, "curves": {g: {v: mean AP of g}, "all": {v: mean over all}}}``.
    Needs at least two groups."""
    vs = sorted(float(v) for v in per_query)
    if not vs:
        raise ValueError("no fusion weights to choose from")
    queries = [q for q in per_query[vs[0]] if q in groups]
    names = sorted({groups[q] for q in queries})
    if len(names) < 2:
        raise ValueError(f"cross-fitting needs queries of at least two groups, got {names}")
    for v in vs:
        missing = [q for q in queries if q not in per_query[v]]
        if missing:
            raise ValueError(f"v={v}: no AP for queries {missing[:3]}")
    members = {g: [q for q in queries if groups[q] == g] for g in names}
    curves = {g: {v: _mean(per_query[v][q] for q in members[g]) for v in vs} for g in names}
    curves["all"] = {v: _mean(per_query[v][q] for q in queries) for v in vs}
    chosen = {}
    for g in names:
        others = [q for q in queries if groups[q] != g]
        means = np.array([_mean(per_query[v][q] for q in others) for v in vs])
        best = np.flatnonzero(means >= means.max() - 1e-12)
        chosen[g] = vs[int(best[-1])]                     # ties: the largest v
    fitted = {q: float(per_query[chosen[groups[q]]][q]) for q in queries}
    score = {g: _mean(fitted[q] for q in members[g]) for g in names}
    score["all"] = _mean(fitted.values())
    return {"v": chosen, "per_query": fitted, "score": score, "curves": curves}


def usage_groups(dataset) -> Dict[str, str]:
    """``{query id: 'Public' | 'Private'}`` of the scored (not Ignored) GLDv2 queries."""
    out = {}
    for qid in dataset.query_ids:
        truth = dataset.ground_truth.get(qid)
        if truth is not None and truth.usage in ("Public", "Private"):
            out[qid] = truth.usage
    return out


def oxford_halves(query_ids: Sequence[str], labels: Sequence[str]) -> Dict[str, str]:
    """``{query id: 'A' | 'B'}``: landmarks in sorted order alternate between the halves, so v for a
    query is always chosen on other landmarks."""
    landmarks = sorted(set(labels))
    half = {lab: ("A" if i % 2 == 0 else "B") for i, lab in enumerate(landmarks)}
    return {q: half[lab] for q, lab in zip(query_ids, labels)}


def _pct(x: float) -> float:
    return round(100.0 * x, 2) if x == x else math.nan


def result_rows(experiment: str, dataset: str, split_scores: Mapping[str, float],
                v: Optional[Mapping[str, float]] = None, seconds: Optional[float] = None,
                metric: str = METRIC, note: str = "") -> List[dict]:
    """One row per split: ``{"experiment", "dataset", "split", "metrics": {metric: %}, "v", "seconds",
    "note"}``. ``v``: the fusion weight per split (None for global-only experiments); the "all" row
    gets the per-split weights joined, e.g. ``"Public:0.3 Private:0.5"``."""
    rows = []
    for split, value in split_scores.items():
        if v is None:
            v_text = None
        elif split in v:
            v_text = v[split]
        else:
            v_text = " ".join(f"{g}:{v[g]:g}" for g in sorted(v))
        rows.append({"experiment": experiment, "dataset": dataset, "split": split,
                     "metrics": {metric: _pct(value)}, "v": v_text,
                     "seconds": None if seconds is None else round(float(seconds), 1), "note": note})
    return rows


def summary_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per (dataset, experiment), a column per split (mAP in %), the chosen v's
    and the seconds."""
    order: List[Tuple[str, str]] = []
    cells: Dict[Tuple[str, str], dict] = {}
    splits: Dict[str, List[str]] = {}
    for r in rows:
        key = (r["dataset"], r["experiment"])
        if key not in cells:
            order.append(key)
            cells[key] = {"v": {}, "seconds": r.get("seconds"), "metric": None, "note": r.get("note", "")}
        metric, value = next(iter(r["metrics"].items()))
        cells[key]["metric"] = metric
        cells[key][r["split"]] = value
        if r["split"] != "all" and r.get("v") is not None:
            cells[key]["v"][r["split"]] = r["v"]
        splits.setdefault(r["dataset"], [])
        if r["split"] not in splits[r["dataset"]]:
            splits[r["dataset"]].append(r["split"])
    lines = []
    for dataset in dict.fromkeys(d for d, _ in order):
        cols = splits[dataset]
        metric = next(cells[k]["metric"] for k in order if k[0] == dataset)
        lines.append(f"\n**{dataset}** ({metric}, %)\n")
        lines.append("| experiment | " + " | ".join(cols) + " | v (per split, cross-fitted) | seconds | note |")
        lines.append("|---|" + "---|" * len(cols) + "---|---|---|")
        for key in order:
            if key[0] != dataset:
                continue
            c = cells[key]
            vals = [f"{c[s]:.2f}" if isinstance(c.get(s), float) and c[s] == c[s] else "-" for s in cols]
            v_text = " ".join(f"{s}:{v:g}" for s, v in c["v"].items()) or "-"
            sec = "-" if c["seconds"] is None else f"{c['seconds']:.0f}"
            lines.append(f"| {key[1]} | " + " | ".join(vals) + f" | {v_text} | {sec} | {c['note']} |")
    return "\n".join(lines).strip("\n")


def sweep_table(sweeps: Mapping[str, Mapping[str, Mapping[str, Mapping[float, float]]]]) -> str:
    """Markdown of the v-sweep curves: ``sweeps[dataset][experiment][split][v] = mAP`` (fraction)."""
    lines = []
    for dataset, by_exp in sweeps.items():
        lines.append(f"\n**v-sweep, {dataset}** (%; v = 1 is the global ranking)\n")
        lines.append("| experiment | split | " + " | ".join(f"v={v:g}" for v in VS) + " |")
        lines.append("|---|---|" + "---|" * len(VS))
        for exp, by_split in by_exp.items():
            for split, curve in by_split.items():
                vals = [f"{100 * curve[v]:.2f}" if v in curve else "-" for v in VS]
                lines.append(f"| {exp} | {split} | " + " | ".join(vals) + " |")
    return "\n".join(lines).strip("\n")


# --------------------------------------------------------------------------------------------------
# options, timings, cache layout
# --------------------------------------------------------------------------------------------------

@dataclass
class Options:
    data: Path
    out: Path
    cache: Path
    gldv2: Optional[Path] = None
    oxford: Optional[Path] = None
    quick: bool = False
    device: str = "auto"
    train_config: str = "coil"
    train_overrides: Dict[str, Dict[str, str]] = field(default_factory=dict)
    global_config: str = "auto"
    oxford_config: str = "lite0-blocks-gem-ms-512"
    recompute: Tuple[str, ...] = ()
    skip_oxford: bool = False
    n_jobs: int = 2
    backend: str = "auto"
    n_query_figures: int = 4
    progress: bool = True

    @property
    def run_cache(self) -> Path:
        return self.cache / ("quick" if self.quick else "full")


class Timings:
    """Compute seconds per stage, kept in ``<cache>/timings.json`` so a resumed run reports what a
    stage cost when it ran (a stage found complete in the cache adds nothing)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.seconds: Dict[str, float] = {}
        if self.path.is_file():
            try:
                self.seconds = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError):
                self.seconds = {}
        self.this_run: Dict[str, float] = {}
        self._fresh: set = set()   # stages computed in this run (their stored seconds restart)

    def add(self, stage: str, seconds: float, computed: bool = True) -> None:
        self.this_run[stage] = self.this_run.get(stage, 0.0) + seconds
        if not computed:
            return
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds if stage in self._fresh else seconds
        self._fresh.add(stage)
        # read-modify-write of this stage only: another run sharing the cache keeps its entries
        on_disk = {}
        if self.path.is_file():
            try:
                on_disk = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError):
                on_disk = {}
        on_disk.update({k: self.seconds[k] for k in self._fresh})
        self.seconds = {**on_disk, **self.seconds}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(on_disk, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def __getitem__(self, stage: str) -> float:
        return self.seconds.get(stage, 0.0)

    def total(self, *stages: str) -> float:
        return float(sum(self.seconds.get(s, 0.0) for s in stages))


class _stage:
    """``with _stage(timings, "name") as s: ... s.computed = False`` when nothing was computed."""

    def __init__(self, timings: Timings, name: str):
        self.timings, self.name, self.computed = timings, name, True

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.timings.add(self.name, time.perf_counter() - self.start, self.computed)
        return False


def _remove(*paths: Path) -> None:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _say(text: str) -> None:
    print(f"[e1-e7 {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------

def _coil_root(data: Path) -> Path:
    data = Path(data)
    if (data / "labels.csv").is_file():
        return data
    if (data / "coil100" / "labels.csv").is_file():
        return data / "coil100"
    from retrieval.datasets import DatasetError

    raise DatasetError(f"{data}: no COIL-100 here (expected {data / 'coil100' / 'labels.csv'}); pass "
                       "--data DIR holding coil100/, or --gldv2 PATH")


def coil_split(coil_root: Path, quick: bool):
    """The COIL-100 GLDv2 split: full = :func:`retrieval.datasets.coil100_gldv2_split` (train objects
    1-50, test 51-100, every 8th view a query); quick = objects 1-8 / 51-58 with every second view
    (36 per object), every 6th of those a query (the same :func:`labelled_gldv2_split` path)."""
    from retrieval.datasets import RetrievalDataset, coil100_gldv2_split, labelled_gldv2_split, read_labelled_folder

    if not quick:
        return coil100_gldv2_split(coil_root, **FULL_COIL)
    full = read_labelled_folder(coil_root)
    objects = {str(o) for o in QUICK_COIL["train_objects"]} | {str(o) for o in QUICK_COIL["test_objects"]}
    azimuth = full.db_metadata.get("azimuth_deg")
    keep = [i for i, lab in enumerate(full.db_labels)
            if lab in objects and (azimuth is None or int(round(float(azimuth[i]))) % 10 == 0)]
    sub = RetrievalDataset(
        name=full.name, root=full.root, db_ids=[full.db_ids[i] for i in keep],
        db_paths=[full.db_paths[i] for i in keep], query_ids=[], query_paths=[], ground_truth={},
        db_labels=[full.db_labels[i] for i in keep], bad_files=full.bad_files,
        db_metadata={k: [v[i] for i in keep] for k, v in full.db_metadata.items()}, metadata=full.metadata)
    return labelled_gldv2_split(sub, [str(o) for o in QUICK_COIL["train_objects"]],
                                [str(o) for o in QUICK_COIL["test_objects"]], query_step=6)


def prepare_data(opts: Options, timings: Timings):
    """The GLDv2-format dataset to run on: ``--gldv2`` as given, else COIL-100 exported into the cache
    (``<cache>/coil100-gldv2``, see :func:`coil_split`). When the export in the cache was made from
    another data folder or split, the whole run cache (everything derived from it) is cleared first.
    Returns (dataset, name)."""
    from retrieval.datasets import read_gldv2
    from retrieval.datasets import export_gldv2
    from retrieval.datasets.gldv2 import MANIFEST

    if opts.gldv2 is not None:
        with _stage(timings, "data") as st:
            st.computed = False
            ds = read_gldv2(opts.gldv2)
        if not ds.train_ids:
            from retrieval.datasets import DatasetError

            raise DatasetError(f"{opts.gldv2}: no train.csv (or no training images): E2-E4 need training data")
        return ds, Path(opts.gldv2).name or "gldv2"
    folder = opts.run_cache / "coil100-gldv2"
    coil_root = _coil_root(opts.data)
    key = {"source": str(coil_root.resolve()), "quick": opts.quick,
           "split": {k: [min(v), max(v)] for k, v in (QUICK_COIL if opts.quick else FULL_COIL).items()},
           "version": 1}
    key_file = opts.run_cache / "data.json"
    stale = key_file.is_file() and json.loads(key_file.read_text()) != key
    if "data" in opts.recompute or stale:
        if stale:
            _say(f"{folder} was exported from other data or another split: clearing {opts.run_cache}")
            _remove(opts.run_cache)
            timings.seconds.clear()
        else:
            _remove(folder)
    with _stage(timings, "data") as st:
        if not (folder / MANIFEST).is_file() or not key_file.is_file():
            _say(f"exporting COIL-100 to GLDv2 format in {folder}")
            export_gldv2(coil_split(coil_root, opts.quick), folder, progress=opts.progress)
            key_file.write_text(json.dumps(key, indent=1))
        else:
            st.computed = False
        ds = read_gldv2(folder)
    return ds, "coil100-gldv2" + ("-quick" if opts.quick else "")


# --------------------------------------------------------------------------------------------------
# training (E2, E3, E4)
# --------------------------------------------------------------------------------------------------

def resolve_train_config(family: str, experiment: str, device: str, overrides: Mapping[str, str],
                         quick: bool):
    """The TrainConfig of ``experiment`` ('e2' | 'e3' | 'e4') in ``family``: ``<family>-<e>`` (e.g.
    ``coil-e2``) or ``<first>-<e>-<rest>`` (``gldv2-gpu`` -> ``gldv2-e2-gpu``), with ``loop.device``,
    the quick overrides and the user's ``--set`` overrides applied."""
    from retrieval.training import TRAIN_CONFIGS, get_config

    head, _, tail = family.partition("-")
    candidates = [f"{family}-{experiment}", f"{head}-{experiment}-{tail}" if tail else None, family]
    name = next((c for c in candidates if c and c in TRAIN_CONFIGS and
                 (c != family or TRAIN_CONFIGS[c].name.endswith(experiment))), None)
    if name is None:
        raise ValueError(f"no training configuration for {experiment.upper()} in family {family!r} (tried "
                         f"{[c for c in candidates[:2] if c]}); known: {sorted(TRAIN_CONFIGS)}")
    cfg = get_config(name, **{"loop.device": device})
    if quick:
        cfg = cfg.with_overrides(**quick_train_overrides())
    if overrides:
        cfg = cfg.with_overrides(**dict(overrides))
    return cfg


def train_models(dataset, opts: Options, timings: Timings) -> Dict[str, Path]:
    """Train E2 (classifier), E3 (Siamese from ImageNet), E4 (Siamese from E2) into
    ``<cache>/train/<e>/``; a finished model is reused, an interrupted one resumes from ``last.pt``.
    Returns ``{"E2": model.pt, ...}``."""
    from retrieval.training import train_classifier, train_siamese
    from retrieval.training.finetune import images_for

    root = opts.run_cache / "train"
    if "train" in opts.recompute:
        _remove(root)
    paths = {}
    images = None
    images_key = None
    for exp in ("e2", "e3", "e4"):
        cfg = resolve_train_config(opts.train_config, exp, opts.device, opts.train_overrides.get(exp, {}),
                                   opts.quick)
        out = root / exp
        model = out / "model.pt"
        if model.is_file() and model.with_suffix(".json").is_file():
            stored = json.loads(model.with_suffix(".json").read_text()).get("config", {})
            if stored.get("train_config") == json.loads(json.dumps(cfg.to_dict())):
                paths[exp.upper()] = model
                if timings[f"train {exp.upper()}"] == 0.0 and stored.get("train_seconds"):
                    timings.add(f"train {exp.upper()}", float(stored["train_seconds"]))
                continue
            _say(f"{model} was trained with another configuration: training {exp.upper()} again")
            _remove(out)
        key = (cfg.load_size, cfg.fit, cfg.cache_images, cfg.n_jobs, cfg.decode_backend, cfg.on_error)
        with _stage(timings, f"train {exp.upper()}"):
            if images is None or key != images_key:
                _say(f"decoding {len(dataset.train_paths)} training images")
                images = images_for(cfg, dataset.train_paths, dataset.train_labels, opts.progress)
                images_key = key
            _say(f"training {exp.upper()} ({cfg.name}) in {out}")
            if exp == "e2":
                path = train_classifier(cfg, dataset.train_paths, dataset.train_labels, out, images=images,
                                        progress=opts.progress)
            else:
                init = paths["E2"] if exp == "e4" else None
                path = train_siamese(cfg, dataset.train_paths, dataset.train_labels, out, init_checkpoint=init,
                                     images=images, progress=opts.progress)
        paths[exp.upper()] = Path(path)
    return paths


# --------------------------------------------------------------------------------------------------
# global descriptors, ranking, shortlist
# --------------------------------------------------------------------------------------------------

def _global_config(opts: Options) -> object:
    from retrieval.features.efficientnet import resolve_config

    if opts.global_config != "auto":
        return resolve_config(opts.global_config)
    if opts.gldv2 is None:  # COIL: native 128 x 128, square
        return resolve_config("lite0-gem-224", size=128)
    return resolve_config("lite0-gem-512")


def _ordered(ids: List[str], vectors: np.ndarray, wanted: Sequence[str], path: Path) -> np.ndarray:
    pos = {i: n for n, i in enumerate(ids)}
    missing = [w for w in wanted if w not in pos]
    if missing:
        from retrieval.features.store import FeatureFileError

        raise FeatureFileError(path, f"lacks {len(missing)} image(s), e.g. {missing[:3]}")
    return vectors[[pos[w] for w in wanted]]


def _fresh_file(compute, path: Path):
    """Run ``compute`` (a resumable extraction into ``path``); a file made with another configuration
    (e.g. features of a model that has since been retrained) is deleted and computed again."""
    from retrieval.features.store import FeatureFileError

    try:
        return compute()
    except FeatureFileError as exc:
        if "made with" not in str(exc):
            raise
        _say(f"{path}: stale ({str(exc)[:160]}...); recomputing")
        _remove(path)
        return compute()


def global_features(extractor, dataset, folder: Path, name: str, opts: Options, timings: Timings,
                    stage: str) -> Tuple[np.ndarray, np.ndarray]:
    """(database vectors, query vectors) in dataset order, from ``folder/<name>_{index,queries}.h5``
    (extracted when missing; queries cropped to their boxes when the dataset has them)."""
    from retrieval.features.deep_extract import extract_global
    from retrieval.features.store import load_global

    out = []
    for split, ids, paths, boxes in (("index", dataset.db_ids, dataset.db_paths, None),
                                     ("queries", dataset.query_ids, dataset.query_paths, dataset.query_boxes)):
        path = folder / f"{name}_{split}.h5"
        with _stage(timings, stage) as st:
            res = _fresh_file(lambda: extract_global(extractor, ids, paths, path, n_jobs=opts.n_jobs, boxes=boxes,
                                                     progress=opts.progress, desc=f"{name} {split}"), path)
            st.computed = res.computed > 0
        got_ids, vectors, _ = load_global(path, expect_config=extractor.config)
        out.append(_ordered(got_ids, vectors, [str(i) for i in ids], path))
    return out[0], out[1]


def rank(db_vectors: np.ndarray, query_vectors: np.ndarray, dataset, k: int):
    """Exact cosine top-``k`` of every query (:class:`retrieval.Index`)."""
    from retrieval import Index

    index = Index(db_vectors, ids=[str(i) for i in dataset.db_ids])
    return index.search(query_vectors, k=min(k, len(dataset.db_ids)), query_ids=[str(q) for q in dataset.query_ids])


def build_shortlist(ranking, path: Path, config: dict, recompute: bool):
    """The cached :class:`rerank.shortlist.Shortlist` of ``ranking``'s top-100 (the rest as tail),
    reopened when it exists with the same configuration (its local scores kept)."""
    from retrieval.features.store import FeatureFileError
    from retrieval.rerank.shortlist import Shortlist

    if recompute:
        for p in Shortlist.paths(path):
            _remove(p)
    if Shortlist.exists(path):
        try:
            return Shortlist.load(path, expect_config=config)
        except FeatureFileError as exc:
            _say(f"shortlist cache not reusable ({exc}); rebuilding")
    shortlist = Shortlist.from_ranking(ranking, k=K_SHORTLIST, config=config)
    shortlist.save(path)
    return shortlist


def _per_query(dataset, predictions, protocol: str) -> Dict[str, float]:
    from retrieval.evaluate import evaluate_per_query

    scores = evaluate_per_query(dataset, predictions, protocol=protocol, k=100)
    return scores[METRIC] if protocol == "gldv2" else scores["oxford_map"]


def _group_means(per_query: Mapping[str, float], groups: Mapping[str, str]) -> Dict[str, float]:
    names = sorted(set(groups.values()))
    out = {g: _mean(per_query[q] for q in per_query if groups.get(q) == g) for g in names}
    out["all"] = _mean(per_query[q] for q in per_query if q in groups)
    return out


def _score_local(shortlist, path: Path, scorer, name: str, q_store, db_store, timings: Timings, stage: str,
                 progress: bool) -> None:
    with _stage(timings, stage) as st:
        st.computed = bool(shortlist.pending(name))
        shortlist.score_with(scorer, q_store, db_store, name=name, path=path, progress=progress)


def _preload(store_path: Path, shortlist, dtype=np.float32, extra_ids: Sequence[str] = (), progress: bool = True):
    """``{id: LocalFeatures}`` of the shortlist's queries and shortlisted images (plus ``extra_ids``),
    read once: scoring then looks each image up ~k times without going back to HDF5."""
    from tqdm.auto import tqdm

    from retrieval.features.store import LocalFeatureStore

    ids = list(dict.fromkeys([*shortlist.query_ids, *np.unique(shortlist.db_ids).tolist(), *extra_ids]))
    with LocalFeatureStore(store_path, mode="r") as store:
        return {i: store.get(i, dtype=dtype) for i in tqdm(ids, desc=f"read {Path(store_path).name}",
                                                           disable=not progress, leave=False)}


def _fusion_sweep(dataset, shortlist, name: str, protocol: str) -> Dict[float, Dict[str, float]]:
    from retrieval.rerank.fusion import sweep

    return {v: _per_query(dataset, preds, protocol)
            for v, preds in sweep(shortlist, VS, local=name, norm=FUSION_NORM[name]).items()}


@dataclass
class RerankResult:
    experiment: str
    fit: dict
    seconds: float
    predictions: Dict[str, List[str]]


def _rerank_experiment(experiment: str, dataset, shortlist, name: str, groups, protocol: str,
                       seconds: float, timings: Timings, prefix: str = "") -> RerankResult:
    from retrieval.rerank.fusion import fuse, fusion_order

    start = time.perf_counter()
    per_v = _fusion_sweep(dataset, shortlist, name, protocol)
    fit = cross_fit_v(per_v, groups)
    # the final ranking per query at its split's v (for the figures)
    local = shortlist.local_scores(name)
    v_row = np.array([fit["v"].get(groups.get(q), 1.0) for q in shortlist.query_ids])
    fused = np.vstack([fuse(shortlist.global_scores[i], local[i], float(v_row[i]), FUSION_NORM[name])
                       for i in range(shortlist.num_queries)]) if shortlist.num_queries else np.zeros((0, 0))
    preds = shortlist.predictions(fusion_order(fused))
    stage = f"{prefix}fusion {experiment}"
    timings.add(stage, time.perf_counter() - start)
    return RerankResult(experiment, fit, seconds + timings[stage], preds)


# --------------------------------------------------------------------------------------------------
# the COIL / GLDv2 ladder
# --------------------------------------------------------------------------------------------------

def shortlisted_images(dataset, shortlist) -> Tuple[List[str], List, Optional[List]]:
    """(ids, paths, boxes) of the images that re-ranking reads: every query and every database image
    in some query's shortlist (on GLDv2, ~100 per query instead of the 760k index), in dataset order;
    boxes are None when the dataset has no query boxes."""
    wanted = set(np.unique(shortlist.db_ids).tolist())
    db = [i for i, d in enumerate(dataset.db_ids) if str(d) in wanted]
    ids = [str(dataset.db_ids[i]) for i in db] + [str(q) for q in dataset.query_ids]
    paths = [dataset.db_paths[i] for i in db] + list(dataset.query_paths)
    boxes = None if dataset.query_boxes is None else [None] * len(db) + list(dataset.query_boxes)
    return ids, paths, boxes


def ladder_sift(dataset, shortlist, opts: Options, timings: Timings):
    """RootSIFT of the queries and shortlisted index images (:func:`shortlisted_images`) into
    ``<cache>/local/sift.h5`` (E5, E6). Returns (extractor, store path)."""
    from retrieval.features.extract import extract_local_features
    from retrieval.features.sift import SiftExtractor

    sift_path = opts.run_cache / "local" / "sift.h5"
    if "sift" in opts.recompute:
        _remove(sift_path)
    ids, paths, boxes = shortlisted_images(dataset, shortlist)
    sift = SiftExtractor(COIL_SIFT if opts.gldv2 is None else "rootsift-1k")
    with _stage(timings, "sift index+queries") as st:
        res = extract_local_features(ids, paths, sift, sift_path, n_jobs=opts.n_jobs, boxes=boxes,
                                     progress=opts.progress, desc="RootSIFT")
        st.computed = res.computed > 0
    return sift, sift_path


def ladder_vlad_encoder(dataset, dname: str, sift, opts: Options, timings: Timings):
    """The E6 VLAD encoder (k = 64) learned on the RootSIFT of every 4th training image (quick: every
    2nd), kept in ``<cache>/vlad/encoder.npz``."""
    from retrieval.features.encoders.vlad import VladEncoder
    from retrieval.features.extract import extract_local_features
    from retrieval.features.store import LocalFeatureStore

    vlad_dir = opts.run_cache / "vlad"
    if "vlad" in opts.recompute:
        _remove(vlad_dir)
    enc_path = vlad_dir / "encoder.npz"
    if enc_path.is_file():
        return VladEncoder.load(enc_path)
    step = 2 if opts.quick else 4
    tr = list(range(0, len(dataset.train_ids), step))
    tr_ids = [str(dataset.train_ids[i]) for i in tr]
    with _stage(timings, "vlad codebook"):
        extract_local_features(tr_ids, [dataset.train_paths[i] for i in tr], sift, vlad_dir / "sift_train.h5",
                               n_jobs=opts.n_jobs, progress=opts.progress, desc="RootSIFT (training images)")
        with LocalFeatureStore(vlad_dir / "sift_train.h5", mode="r") as tstore:
            feats = [tstore.get(i) for i in tr_ids]
        encoder = VladEncoder(k=VLAD_WORDS, trained_on=f"{dname} training images (every {step})").fit(feats)
        encoder.save(enc_path)
    return encoder


def run_coil(opts: Options, timings: Timings):
    """E1-E7 on the GLDv2-format data. Returns (rows, sweeps, predictions per experiment, dataset, name)."""
    from retrieval.features.efficientnet import EfficientNetExtractor, resolve_config
    from retrieval.features.deep_extract import extract_patches
    from retrieval.features.encoders.vlad import VladEncoder
    from retrieval.features.extract import extract_local_features
    from retrieval.features.sift import SiftExtractor
    from retrieval.features.store import LocalFeatureStore
    from retrieval.rerank.patch import PatchScorer
    from retrieval.rerank.ratio import RatioTestScorer
    from retrieval.rerank.vlad import VladSimilarityScorer

    dataset, dname = prepare_data(opts, timings)
    _say(dataset.summary())
    groups = usage_groups(dataset)
    if len(set(groups.values())) < 2:
        from retrieval.datasets import DatasetError

        raise DatasetError(f"{dataset.root}: cross-fitting v needs both Public and Private queries in "
                           f"{dataset.root / 'retrieval_solution_v2.1.csv'}")
    cache = opts.run_cache
    models = train_models(dataset, opts, timings)
    gfolder = cache / "global"
    if "global" in opts.recompute:
        _remove(gfolder)
    base = _global_config(opts)
    rows, preds_of, sweeps = [], {}, {}
    rankings = {}
    for exp in ("E1", "E2", "E3", "E4"):
        weights = "imagenet" if exp == "E1" else str(models[exp])
        extractor = EfficientNetExtractor(dict(base, weights=weights), backend=opts.backend, device=opts.device)
        db, q = global_features(extractor, dataset, gfolder, exp.lower(), opts, timings, f"extract {exp}")
        with _stage(timings, f"search {exp}"):
            ranking = rank(db, q, dataset, K_SHORTLIST)
        rankings[exp] = (ranking, extractor.config)
        preds = ranking.to_predictions()
        per_q = _per_query(dataset, preds, "gldv2")
        means = _group_means(per_q, groups)
        seconds = timings.total(f"train {exp}", f"extract {exp}", f"search {exp}")
        note = {"E1": "ImageNet", "E2": "classifier head", "E3": "Siamese from ImageNet",
                "E4": "Siamese from E2"}[exp]
        rows += result_rows(exp, dname, {"Public": means["Public"], "Private": means["Private"], "all": means["all"]},
                            seconds=seconds, note=note)
        preds_of[exp] = preds
        _say(f"{exp}: mAP@100 all {100 * means['all']:.2f}")

    # E4's shortlist, re-ranked by three local scores
    ranking, gconf = rankings["E4"]
    sl_path = cache / "shortlist" / "e4"
    shortlist = build_shortlist(ranking, sl_path, {"global": gconf, "k": K_SHORTLIST},
                                "shortlist" in opts.recompute)
    ids, paths, boxes = shortlisted_images(dataset, shortlist)
    local = cache / "local"

    # E5: RootSIFT ratio-test score
    if "sift" in opts.recompute:
        shortlist.local.pop("ratio", None)
    sift, sift_path = ladder_sift(dataset, shortlist, opts, timings)
    with _stage(timings, "read sift") as st:
        st.computed = bool(shortlist.pending("ratio") or shortlist.pending("vlad"))
        store = _preload(sift_path, shortlist, progress=opts.progress) if st.computed else {}
    _score_local(shortlist, sl_path, RatioTestScorer(ratio=0.8), "ratio", store, store, timings,
                 "score E5", opts.progress)
    e5 = _rerank_experiment("E5", dataset, shortlist, "ratio", groups, "gldv2",
                            timings.total("sift index+queries", "read sift", "score E5"), timings)

    # E6: VLAD similarity, codebook on (a sample of) the training images' RootSIFT
    if "vlad" in opts.recompute:
        shortlist.local.pop("vlad", None)
    encoder = ladder_vlad_encoder(dataset, dname, sift, opts, timings)
    _score_local(shortlist, sl_path, VladSimilarityScorer(encoder), "vlad", store, store, timings, "score E6",
                 opts.progress)
    e6 = _rerank_experiment("E6", dataset, shortlist, "vlad", groups, "gldv2",
                            timings.total("sift index+queries", "read sift", "vlad codebook", "score E6"), timings)
    del store

    # E7: patch tokens of the E4 network
    patch_path = local / "patch_e4.h5"
    if "patch" in opts.recompute:
        _remove(patch_path)
        shortlist.local.pop(f"patch-{PATCH_METHOD}", None)
    pcfg = resolve_config("lite0-patch-224", weights=str(models["E4"]))
    pextractor = EfficientNetExtractor(pcfg, backend=opts.backend, device=opts.device)
    with _stage(timings, "patches E4") as st:
        res = _fresh_file(lambda: extract_patches(pextractor, ids, paths, patch_path, n_jobs=opts.n_jobs,
                                                  boxes=boxes, progress=opts.progress, desc="patch tokens (E4)"),
                          patch_path)
        st.computed = res.computed > 0
    scorer = PatchScorer(PATCH_METHOD)
    with _stage(timings, "read patches") as st:
        st.computed = bool(shortlist.pending(scorer.name))
        pstore = _preload(patch_path, shortlist, np.float16, progress=opts.progress) if st.computed else {}
    _score_local(shortlist, sl_path, scorer, scorer.name, pstore, pstore, timings, "score E7", opts.progress)
    del pstore
    e7 = _rerank_experiment("E7", dataset, shortlist, scorer.name, groups, "gldv2",
                            timings.total("patches E4", "read patches", "score E7"), timings)

    notes = {"E5": "E4 + RootSIFT ratio test", "E6": "E4 + RootSIFT VLAD", "E7": "E4 + E4 patch tokens"}
    sweeps[dname] = {}
    for r in (e5, e6, e7):
        rows += result_rows(r.experiment, dname, {"Public": r.fit["score"]["Public"],
                                                  "Private": r.fit["score"]["Private"], "all": r.fit["score"]["all"]},
                            v=r.fit["v"], seconds=r.seconds, note=notes[r.experiment])
        sweeps[dname][r.experiment] = r.fit["curves"]
        preds_of[r.experiment] = r.predictions
        _say(f"{r.experiment}: mAP@100 all {100 * r.fit['score']['all']:.2f} (v {r.fit['v']})")
    return rows, sweeps, preds_of, dataset, dname


# --------------------------------------------------------------------------------------------------
# Oxford
# --------------------------------------------------------------------------------------------------

def oxford_quick_subset(dataset, n_landmarks: int = 2, per_landmark: int = 2, n_others: int = 20, seed: int = 0):
    """A small Oxford: the first ``per_landmark`` queries of the ``n_landmarks`` landmarks with the
    fewest relevant images, a database of their positives and junk plus ``n_others`` other images
    (seeded), ground truth restricted to that database."""
    from retrieval.datasets import RetrievalDataset

    by_lm: Dict[str, List[int]] = {}
    for i, lab in enumerate(dataset.query_labels):
        by_lm.setdefault(lab, []).append(i)
    size = {lab: len(dataset.ground_truth[dataset.query_ids[pos[0]]].positives) for lab, pos in by_lm.items()}
    landmarks = sorted((lab for lab in by_lm if size[lab] > 0), key=lambda lab: (size[lab], lab))[:n_landmarks]
    qpos = [p for lab in sorted(landmarks) for p in by_lm[lab][:per_landmark]]
    keep = set()
    for p in qpos:
        t = dataset.ground_truth[dataset.query_ids[p]]
        keep |= t.positives | t.junk
    rng = np.random.default_rng(seed)
    others = [i for i in dataset.db_ids if i not in keep]
    keep |= set(rng.choice(others, size=min(n_others, len(others)), replace=False).tolist())
    dpos = [i for i, d in enumerate(dataset.db_ids) if d in keep]
    from retrieval.datasets import QueryTruth

    truth = {}
    for p in qpos:
        t = dataset.ground_truth[dataset.query_ids[p]]
        truth[dataset.query_ids[p]] = QueryTruth(positives=t.positives & keep, junk=t.junk & keep)
    return RetrievalDataset(
        name=dataset.name + "-quick", root=dataset.root, db_ids=[dataset.db_ids[i] for i in dpos],
        db_paths=[dataset.db_paths[i] for i in dpos], query_ids=[dataset.query_ids[p] for p in qpos],
        query_paths=[dataset.query_paths[p] for p in qpos], ground_truth=truth,
        query_labels=[dataset.query_labels[p] for p in qpos], query_boxes=[dataset.query_boxes[p] for p in qpos],
        metadata=dict(dataset.metadata, subset="quick"))


def run_oxford(opts: Options, timings: Timings):
    """E1 and E5-E7 (re-ranking E1's top-100) on the Oxford subset. Returns (rows, sweeps, predictions,
    dataset, name)."""
    from retrieval.features.efficientnet import EfficientNetExtractor, resolve_config
    from retrieval.features.deep_extract import extract_patches
    from retrieval.features.encoders.vlad import VladEncoder
    from retrieval.features.extract import extract_local_features
    from retrieval.features.sift import SiftExtractor
    from retrieval.features.store import LocalFeatureStore
    from retrieval.rerank.patch import PatchScorer
    from retrieval.rerank.ratio import RatioTestScorer
    from retrieval.rerank.vlad import VladSimilarityScorer
    from retrieval.datasets import read_oxford

    root = opts.oxford if opts.oxford is not None else Path(opts.data) / "oxford5k_subset"
    dataset = read_oxford(root)
    if opts.quick:
        dataset = oxford_quick_subset(dataset)
    dname = "oxford5k_subset" + ("-quick" if opts.quick else "")
    _say(dataset.summary())
    groups = oxford_halves(dataset.query_ids, dataset.query_labels)
    cache = opts.run_cache / "oxford"
    if "oxford" in opts.recompute:
        _remove(cache)
    extractor = EfficientNetExtractor(opts.oxford_config, backend=opts.backend, device=opts.device)
    db, q = global_features(extractor, dataset, cache, "e1", opts, timings, "oxford extract E1")
    with _stage(timings, "oxford search E1"):
        ranking = rank(db, q, dataset, len(dataset.db_ids))   # whole ranking: Oxford AP needs it
    preds = ranking.to_predictions()
    per_q = _per_query(dataset, preds, "oxford")
    half_names = {"A": "half A", "B": "half B"}
    means = _group_means(per_q, groups)
    rows = result_rows("E1", dname, {half_names[g]: means[g] for g in ("A", "B")} | {"all": means["all"]},
                       seconds=timings.total("oxford extract E1", "oxford search E1"), metric="oxford mAP",
                       note=f"ImageNet, {opts.oxford_config}")
    preds_of = {"E1": preds}
    _say(f"Oxford E1: mAP {100 * means['all']:.2f}")
    sl_path = cache / "shortlist_e1"
    shortlist = build_shortlist(ranking, sl_path, {"global": extractor.config, "k": K_SHORTLIST}, False)
    ids = [str(i) for i in dataset.db_ids] + [str(x) for x in dataset.query_ids]
    paths = list(dataset.db_paths) + list(dataset.query_paths)
    boxes = [None] * len(dataset.db_ids) + list(dataset.query_boxes)

    sift = SiftExtractor(OXFORD_SIFT)
    with _stage(timings, "oxford sift") as st:
        res = extract_local_features(ids, paths, sift, cache / "sift.h5", n_jobs=opts.n_jobs, boxes=boxes,
                                     progress=opts.progress, desc="RootSIFT (Oxford)")
        st.computed = res.computed > 0
    with _stage(timings, "oxford read sift"):
        store = _preload(cache / "sift.h5", shortlist, extra_ids=[str(i) for i in dataset.db_ids],
                         progress=opts.progress)
    _score_local(shortlist, sl_path, RatioTestScorer(ratio=0.8), "ratio", store, store, timings,
                 "oxford score E5", opts.progress)
    results = [_rerank_experiment("E5", dataset, shortlist, "ratio", groups, "oxford",
                                  timings.total("oxford sift", "oxford read sift", "oxford score E5"), timings,
                                  "oxford ")]
    enc_path = cache / "vlad_encoder.npz"
    if enc_path.is_file():
        encoder = VladEncoder.load(enc_path)
    else:
        with _stage(timings, "oxford vlad codebook"):
            feats = [store.get(str(i)) for i in dataset.db_ids]
            encoder = VladEncoder(k=VLAD_WORDS, trained_on=f"{dname} database images").fit(feats)
            encoder.save(enc_path)
    _score_local(shortlist, sl_path, VladSimilarityScorer(encoder), "vlad", store, store, timings,
                 "oxford score E6", opts.progress)
    results.append(_rerank_experiment("E6", dataset, shortlist, "vlad", groups, "oxford",
                                      timings.total("oxford sift", "oxford read sift", "oxford vlad codebook",
                                                    "oxford score E6"),
                                      timings, "oxford "))
    del store
    pextractor = EfficientNetExtractor(resolve_config("lite0-patch-224", input="longest", size=512),
                                       backend=opts.backend, device=opts.device)
    with _stage(timings, "oxford patches") as st:
        res = extract_patches(pextractor, ids, paths, cache / "patch_e1.h5", n_jobs=opts.n_jobs, boxes=boxes,
                              progress=opts.progress, desc="patch tokens (Oxford)")
        st.computed = res.computed > 0
    scorer = PatchScorer(PATCH_METHOD)
    with _stage(timings, "oxford read patches") as st:
        st.computed = bool(shortlist.pending(scorer.name))
        pstore = _preload(cache / "patch_e1.h5", shortlist, np.float16, progress=opts.progress) if st.computed else {}
    _score_local(shortlist, sl_path, scorer, scorer.name, pstore, pstore, timings, "oxford score E7", opts.progress)
    del pstore
    results.append(_rerank_experiment("E7", dataset, shortlist, scorer.name, groups, "oxford",
                                      timings.total("oxford patches", "oxford read patches", "oxford score E7"),
                                      timings, "oxford "))
    notes = {"E5": "E1 + RootSIFT ratio test (no training data: re-ranks E1)",
             "E6": "E1 + RootSIFT VLAD, codebook on the database (re-ranks E1)",
             "E7": "E1 + ImageNet patch tokens at 512 px (re-ranks E1)"}
    sweeps = {dname: {}}
    for r in results:
        sc = r.fit["score"]
        rows += result_rows(r.experiment, dname, {"half A": sc["A"], "half B": sc["B"], "all": sc["all"]},
                            v={"half A": r.fit["v"]["A"], "half B": r.fit["v"]["B"]}, seconds=r.seconds,
                            metric="oxford mAP", note=notes[r.experiment])
        sweeps[dname][r.experiment] = {half_names.get(g, g): c for g, c in r.fit["curves"].items()}
        preds_of[r.experiment] = r.predictions
        _say(f"Oxford {r.experiment}: mAP {100 * sc['all']:.2f} (v {r.fit['v']})")
    return rows, sweeps, preds_of, dataset, dname


# --------------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------------

def run(opts: Options) -> str:
    """Everything: the ladder, Oxford, tables, figures. Returns the markdown printed at the end."""
    import torch

    from retrieval.report import peak_rss_mb, write_results

    from . import plots

    start = time.perf_counter()
    timings = Timings(opts.run_cache / "timings.json")
    rows, coil_sweeps, coil_preds, coil_ds, coil_name = run_coil(opts, timings)
    sweeps = dict(coil_sweeps)
    figure_sets = [(coil_ds, coil_name, coil_preds, "E7")]
    if not opts.skip_oxford:
        o_rows, o_sweeps, o_preds, o_ds, o_name = run_oxford(opts, timings)
        rows += o_rows
        sweeps.update(o_sweeps)
        figure_sets.append((o_ds, o_name, o_preds, "E7"))
    wall = time.perf_counter() - start
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen: Dict[str, Dict[str, Dict[str, float]]] = {}
    for r in rows:
        if r["split"] != "all" and isinstance(r.get("v"), float):
            chosen.setdefault(r["dataset"], {}).setdefault(r["experiment"], {})[r["split"]] = r["v"]
    figures = [plots.bar_chart(rows, out / "map_bars.png"), plots.v_sweep_plot(sweeps, out / "v_sweep.png", chosen)]
    for ds, name, preds, exp in figure_sets:
        figures.append(plots.query_grid(ds, preds[exp], out / f"queries_{name}.png",
                                        n_queries=opts.n_query_figures, title=f"{name}: {exp} top-10"))
    summary = summary_table(rows)
    sweep_md = sweep_table(sweeps)
    extra = {
        "v_sweeps": {d: {e: {s: {str(v): c[v] for v in c} for s, c in by_s.items()} for e, by_s in by_e.items()}
                     for d, by_e in sweeps.items()},
        "stage_seconds": timings.seconds, "stage_seconds_this_run": timings.this_run,
        "wall_seconds_this_run": wall, "peak_rss_mb": peak_rss_mb(), "quick": opts.quick,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "figures": [str(f) for f in figures],
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()},
    }
    title = "E1-E7" + (" (quick)" if opts.quick else "")
    metric_cols = list(dict.fromkeys(f"metrics.{m}" for r in rows for m in r["metrics"]))
    long_table = write_results(rows, out, columns=["experiment", "dataset", "split", *metric_cols, "v",
                                                   "seconds", "note"], title=title, extra=extra)
    stage_lines = "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.this_run.items())
    text = (f"## {title}\n\n{summary}\n\n{sweep_md}\n\n**Stages this run** (s)\n\n| stage | seconds |\n|---|---|\n"
            f"{stage_lines}\n\nwall {wall:.0f} s this run, peak RSS {peak_rss_mb():.0f} MiB\n")
    (out / "results.md").write_text(text + "\n### All rows\n\n" + long_table + "\n")
    return text


def _parse_sets(items: Optional[Sequence[str]]) -> Dict[str, Dict[str, str]]:
    out: Dict[str, Dict[str, str]] = {}
    for item in items or []:
        exp, _, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        exp = exp.lower()
        if not eq or exp not in ("e2", "e3", "e4") or not key:
            raise ValueError(f"--set takes EXPERIMENT:KEY=VALUE with EXPERIMENT e2, e3 or e4, got {item!r}")
        out.setdefault(exp, {})[key] = value
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    from retrieval.paths import data_root

    ap.add_argument("--data", default=str(data_root()),
                    help="data folder holding coil100/ and oxford5k_subset/ (default: retrieval.paths.data_root())")
    ap.add_argument("--gldv2", default=None, metavar="PATH",
                    help="a GLDv2-format folder (train.csv, index.csv, test.csv, retrieval_solution_v2.1.csv, "
                         "train/ index/ test/) instead of COIL-100")
    ap.add_argument("--oxford", default=None, metavar="PATH", help="Oxford folder (default DATA/oxford5k_subset)")
    ap.add_argument("--skip-oxford", action="store_true", help="run the ladder only")
    ap.add_argument("--out", default=None, help="results folder (default results/e1_e7, quick: results/e1_e7_quick)")
    ap.add_argument("--cache", default="cache/e1_e7", help="cache folder (quick and full runs use subfolders)")
    ap.add_argument("--quick", action="store_true", help="small subset, a few training steps (CI)")
    ap.add_argument("--device", default="auto",
                    help="where training and the EfficientNet extractors run: auto (a GPU when torch sees one), "
                         "cpu, cuda, cuda:1 ...")
    ap.add_argument("--train-config", default="coil",
                    help="training configuration family: 'coil' (coil-e2/e3/e4) or 'gldv2-gpu' (gldv2-e2-gpu ...)")
    ap.add_argument("--set", action="append", metavar="E:KEY=VALUE",
                    help="override a training field, e.g. e3:loop.epochs=2 (repeatable)")
    ap.add_argument("--global-config", default="auto",
                    help="EfficientNet extractor configuration for E1-E4 (auto: 128 px square on COIL, "
                         "lite0-gem-512 on --gldv2)")
    ap.add_argument("--oxford-config", default="lite0-blocks-gem-ms-512",
                    help="extractor configuration for Oxford E1 (features.efficientnet.EXTRACTOR_CONFIGS)")
    ap.add_argument("--recompute", action="store_true", help="ignore every cached result")
    ap.add_argument("--recompute-stage", action="append", choices=STAGES, default=[],
                    help="recompute one stage (repeatable)")
    ap.add_argument("--n-jobs", type=int, default=2, help="decoding / extraction threads")
    ap.add_argument("--backend", default="auto",
                    help="EfficientNet inference path (features.fast_inference.BACKENDS; auto = onnxruntime)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")


def options_from_args(args) -> Options:
    out = args.out or ("results/e1_e7_quick" if args.quick else "results/e1_e7")
    return Options(data=Path(args.data), out=Path(out), cache=Path(args.cache),
                   gldv2=Path(args.gldv2) if args.gldv2 else None, oxford=Path(args.oxford) if args.oxford else None,
                   quick=args.quick, device=args.device, train_config=args.train_config,
                   train_overrides=_parse_sets(args.set), global_config=args.global_config,
                   oxford_config=args.oxford_config,
                   recompute=tuple(STAGES) if args.recompute else tuple(args.recompute_stage),
                   skip_oxford=args.skip_oxford, n_jobs=args.n_jobs, backend=args.backend,
                   progress=not args.no_progress)


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 epilog=__doc__[__doc__.index("Re-rankers"):],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return ap


def check_paths(opts: Options) -> None:
    """User errors found before any work: missing folders, output folders that cannot be made."""
    from retrieval.cli_checks import require_output
    from retrieval.datasets import DatasetError

    require_output(str(opts.out), "results", folder=True)
    require_output(str(opts.cache), "cache", folder=True)

    if opts.gldv2 is not None and not Path(opts.gldv2).is_dir():
        raise DatasetError(f"{opts.gldv2}: no such GLDv2 folder")
    if opts.gldv2 is None:
        _coil_root(opts.data)
    if not opts.skip_oxford:
        root = opts.oxford if opts.oxford is not None else Path(opts.data) / "oxford5k_subset"
        if not Path(root).is_dir():
            raise DatasetError(f"{root}: no Oxford folder (pass --oxford PATH or --skip-oxford)")


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    ap = build_parser(prog)
    args = ap.parse_args(argv)
    try:
        opts = options_from_args(args)
        check_paths(opts)
        text = run(opts)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0
