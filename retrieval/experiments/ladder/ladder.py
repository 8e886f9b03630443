"""One ladder, run over either half (:mod:`.config`): the global rungs, then every re-ranker of
:mod:`.rungs` on the base rung's shortlist, each cross-fitted (:mod:`retrieval.steps.choose`) under each relevance
protocol of the half. Returns table rows, v-sweep curves and the reported predictions."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List

from retrieval.steps.choose import Choice, Relevance, choose, mean_of, query_groups
from retrieval.steps.choose import relevances as relevance_list

from retrieval.experiments.ladder.settings import LadderConfig
from retrieval.experiments.ladder.data import landmark_dataset, object_dataset
from retrieval.experiments.ladder.revisited import revisited_relevances
from retrieval.experiments.ladder.rungs import (Half, rerank_note, rung_asmk, rung_e5, rung_e6, rung_e7, rung_e8,
                                                rung_sv)
from retrieval.experiments.ladder.stages import RunCache, build_shortlist, extractor, global_features, rank, say
from retrieval.experiments.ladder.tables import result_rows

__all__ = ["HalfResult", "run_object", "run_landmark", "GLOBAL_NOTES"]

LOCAL_RUNGS = {"E5": rung_e5, "E6": rung_e6, "E7": rung_e7, "SV": rung_sv, "ASMK": rung_asmk}
GLOBAL_NOTES = {"E1": "ImageNet", "E2": "classifier head", "E3": "Siamese from ImageNet", "E4": "Siamese from E2"}


@dataclass
class HalfResult:
    rows: List[dict] = field(default_factory=list)
    choices: Dict[str, Dict[str, Choice]] = field(default_factory=dict)   # relevance -> experiment -> Choice
    predictions: Dict[str, Dict[str, dict]] = field(default_factory=dict)  # relevance -> experiment -> preds
    relevances: List[Relevance] = field(default_factory=list)
    dataset: object = None
    name: str = ""
    score: object = None          # (query id, database id) -> the base rung's cosine, for the figures


def _cosine(dataset, db, q):
    import numpy as np

    row = {str(i): n for n, i in enumerate(dataset.db_ids)}
    qrow = {str(i): n for n, i in enumerate(dataset.query_ids)}
    return lambda qid, did: float(np.dot(q[qrow[str(qid)]], db[row[str(did)]]))


def _global_rung(result: HalfResult, rung: str, extractor, dataset, half_folder, cache: RunCache, prefix: str,
                 groups, k: int, extra_seconds: float = 0.0, note: str = ""):
    db, q = global_features(extractor, dataset, half_folder, rung.lower(), cache, f"{prefix}extract {rung}")
    with cache.stage(f"{prefix}search {rung}"):
        ranking = rank(db, q, dataset, k)
    preds = ranking.to_predictions()
    seconds = extra_seconds + cache.timer.total(f"{prefix}extract {rung}", f"{prefix}search {rung}")
    for r in result.relevances:
        per_q = r.per_query(preds)
        result.rows += result_rows(rung, r.name, _means(per_q, groups), metric=r.label, seconds=seconds,
                                   note=note or GLOBAL_NOTES[rung])
        result.predictions.setdefault(r.name, {})[rung] = preds
        say(f"{r.name} {rung}: {r.label} {100 * _means(per_q, groups)['all']:.2f}")
    return db, q, ranking, extractor.config


def _means(per_query, groups) -> Dict[str, float]:
    out = {g: mean_of(per_query[q] for q in per_query if groups.get(q) == g) for g in sorted(set(groups.values()))}
    out["all"] = mean_of(per_query[q] for q in per_query if q in groups)
    return out


def _rerank(result: HalfResult, half: Half, conf: LadderConfig, cache: RunCache, groups) -> None:
    todo = []
    for exp in conf.rerankers:
        if exp == "E8":
            todo += [("E8 alpha-QE", lambda m="alpha-QE": rung_e8(half, conf, cache, m)),
                     ("E8 DBA", lambda m="DBA": rung_e8(half, conf, cache, m)),
                     ("E8 DBA+alpha-QE", lambda m="DBA+alpha-QE": rung_e8(half, conf, cache, m))]
        else:
            todo.append((exp, lambda f=LOCAL_RUNGS[exp]: f(half, conf, cache)))
    for exp, run in todo:
        say(f"{half.name}: {exp} on {half.base}")
        candidates, rankings, seconds = run()
        half.stores.clear()   # one rung's local features in memory at a time (4k keypoints: GBs)
        start = time.perf_counter()
        margin = conf.expansion.min_gain if exp.startswith("E8") else conf.fusion.min_gain
        choices = choose(exp, candidates, rankings, result.relevances, groups, margin)
        cache.timer.add(f"{half.prefix}choose {exp}", time.perf_counter() - start)
        seconds += cache.timer[f"{half.prefix}choose {exp}"]
        for r in result.relevances:
            c = choices[r.name]
            chosen = {g: label for g, label in c.fit["chosen"].items()}
            result.rows += result_rows(exp, r.name, c.fit["score"], metric=r.label, chosen=chosen, seconds=seconds,
                                       note=f"{half.base} + {rerank_note(exp, half)}")
            result.choices.setdefault(r.name, {})[exp] = c
            result.predictions.setdefault(r.name, {})[exp] = c.predictions
            say(f"{r.name} {exp}: {r.label} {100 * c.fit['score']['all']:.2f} (chosen {chosen})")
    half.stores.clear()


def run_object(conf: LadderConfig, cache: RunCache) -> HalfResult:
    """E1-E4 (ImageNet, then trained on the training images) and the re-rankers on E4's shortlist."""
    from retrieval.datasets import DatasetError

    from retrieval.experiments.ladder.training import train_models, trained_precision

    dataset, name = object_dataset(conf, cache)
    say(dataset.summary())
    groups = query_groups(dataset, conf.fusion.folds)
    if len(set(groups.values())) < 2:
        raise DatasetError(f"{dataset.root}: cross-fitting needs queries of two groups (Public and Private in "
                           f"{dataset.root / 'retrieval_solution_v2.1.csv'}, or two query labels)")
    result = HalfResult(dataset=dataset, name=name,
                        relevances=[Relevance(name, dataset, "gldv2", "map@100")])
    models = train_models(dataset, conf, cache)
    gfolder = cache.root / "global"
    cache.fresh("global", gfolder)
    o = conf.object
    gconf = o.global_config if o.global_config != "auto" else (
        "lite0-gem-512" if o.dataset == "gldv2" else "lite0-coil-128")
    base = None
    for rung in ("E1", "E2", "E3", "E4"):
        weights = "imagenet" if rung == "E1" else str(models[rung])
        note = "" if rung == "E1" else f"{GLOBAL_NOTES[rung]}; trained in {trained_precision(models[rung])}"
        base = _global_rung(result, rung, extractor("global", gconf, cache, weights=weights), dataset, gfolder, cache, "",
                            groups, conf.shortlist, extra_seconds=cache.timer[f"train {rung}"], note=note)
    db, q, ranking, econf = base
    result.score = _cosine(dataset, db, q)
    sl_path = cache.root / "shortlist" / "e4"
    shortlist = build_shortlist(ranking, sl_path, {"global": econf, "k": conf.shortlist}, conf.shortlist,
                                "shortlist" in cache.recompute)
    step = 2 if conf.quick else 4
    tr = list(range(0, len(dataset.train_ids), step))

    def vlad_images():
        return ([str(dataset.train_ids[i]) for i in tr], [dataset.train_paths[i] for i in tr],
                f"{name} training images (every {step})")

    half = Half("object", dataset, name, cache.root / "local", "", "E4", db, q, shortlist, sl_path, o.sift,
                o.spatial_sift or o.sift, o.spatial, o.vlad_words,
                extractor("patches", o.patch_config, cache, weights=str(models["E4"])), vlad_images, full_ranking=False,
                asmk_words=o.asmk_words, asmk_sample=o.asmk_sample)
    half.folder.mkdir(parents=True, exist_ok=True)
    _rerank(result, half, conf, cache, groups)
    return result


def run_landmark(conf: LadderConfig, cache: RunCache) -> HalfResult:
    """E1 (ImageNet, no training) and the re-rankers on E1's shortlist, under each relevance protocol."""
    lm = conf.landmark
    dataset, name = landmark_dataset(conf)
    say(dataset.summary())
    groups = query_groups(dataset, conf.fusion.folds)
    protocol = "gldv2" if lm.dataset == "gldv2" else "oxford"
    titles = {"official": f"{name} (official: good + ok, junk ignored)" if protocol == "oxford"
              else f"{name} (official)",
              "landmark": f"{name} (landmark-level: every image of the landmark)"}
    # landmark-level: retrieval.evaluation.evaluate's "landmark" protocol (AP over the full ranking)
    named = {protocol if p == "official" else "landmark": titles[p] for p in lm.protocols if p in titles}
    relevances = relevance_list(dataset, list(named), titles=named)
    relevances += revisited_relevances(conf, dataset, name)
    result = HalfResult(dataset=dataset, name=name, relevances=relevances)
    folder = cache.root / "landmark" / name
    cache.fresh("landmark", folder)
    k = len(dataset.db_ids) if protocol == "oxford" else conf.shortlist
    db, q, ranking, econf = _global_rung(result, "E1", extractor("global", lm.global_config, cache), dataset, folder, cache,
                                         "landmark ", groups, k, note=f"ImageNet, {lm.global_config}")
    result.score = _cosine(dataset, db, q)
    sl_path = folder / "shortlist_e1"
    shortlist = build_shortlist(ranking, sl_path, {"global": econf, "k": conf.shortlist}, conf.shortlist,
                                "shortlist" in cache.recompute)

    def vlad_images():
        return [str(i) for i in dataset.db_ids], list(dataset.db_paths), f"{name} database images"

    patch = extractor("patches", lm.patch_config, cache, input="longest", size=lm.patch_size)
    half = Half("landmark", dataset, name, folder, "landmark ", "E1", db, q, shortlist, sl_path, lm.sift,
                lm.spatial_sift, lm.spatial, lm.vlad_words, patch, vlad_images, full_ranking=protocol == "oxford",
                asmk_words=lm.asmk_words, asmk_sample=lm.asmk_sample)
    _rerank(result, half, conf, cache, groups)
    return result
