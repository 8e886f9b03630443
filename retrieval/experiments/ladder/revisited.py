"""The landmark half's revisited relevance protocols (``landmark.protocols`` ``revisited-easy`` /
``revisited-medium`` / ``revisited-hard``): the official revisited ground truth (``landmark.revisited_gnd``, default
``<data>/revisitop/gnd_roxford5k.pkl``) restricted to the images the landmark dataset holds, no
distractors (:mod:`retrieval.evaluation.revisited_subset`). The dataset gains the revisited queries it lacks
(the 15 beyond Oxford's 55), which the standard protocols do not score.

With the default pickle, a data folder without it or a landmark dataset none of whose queries is a
revisited query (Paris, GLDv2, Holidays run with the shipped e1-e7 experiment) skips the revisited
protocols with a message; a pickle named in ``landmark.revisited_gnd`` that is missing or matches no
query is an error."""
from __future__ import annotations

from pathlib import Path
from typing import List

from retrieval.datasets import DatasetError, RetrievalDataset

from retrieval.steps.choose import Relevance

from retrieval.experiments.ladder.settings import LadderConfig

__all__ = ["REVISITED_LEVELS", "revisited_gnd", "add_revisited_queries", "revisited_relevances"]

REVISITED_LEVELS = {"revisited-easy": "easy", "revisited-medium": "medium", "revisited-hard": "hard"}


def _wanted(conf: LadderConfig) -> List[str]:
    wanted = [p for p in conf.landmark.protocols if p in REVISITED_LEVELS]
    if wanted and not conf.landmark.revisited_gnd and not _default_gnd(conf).is_file():
        from retrieval.experiments.ladder.stages import say

        say(f"{_default_gnd(conf)} not found: skipping {', '.join(wanted)}")
        return []
    return wanted


def _default_gnd(conf: LadderConfig) -> Path:
    return conf.root() / "revisitop" / "gnd_roxford5k.pkl"


def revisited_gnd(conf: LadderConfig) -> Path:
    lm = conf.landmark
    path = Path(lm.revisited_gnd).expanduser() if lm.revisited_gnd else _default_gnd(conf)
    if not path.is_file():
        raise DatasetError(f"{path}: no such revisited ground-truth pickle (landmark.protocols asks for "
                           f"{', '.join(_wanted(conf))}; set landmark.revisited_gnd)")
    return path


def add_revisited_queries(conf: LadderConfig, dataset: RetrievalDataset) -> RetrievalDataset:
    """``dataset`` with the revisited queries it lacks, when a revisited protocol is asked for."""
    if not _wanted(conf):
        return dataset
    from retrieval.datasets.revisited_subset import with_revisited_queries

    return with_revisited_queries(dataset, revisited_gnd(conf))


def revisited_relevances(conf: LadderConfig, dataset: RetrievalDataset, name: str) -> List[Relevance]:
    """One :class:`Relevance` per revisited level asked for, scored as the benchmark scores it (the
    ``oxford`` protocol's AP on the level's positives and ignored images)."""
    from retrieval.datasets.revisited_subset import RESTRICTED_NOTE, revisited_view

    out = []
    for protocol in _wanted(conf):
        gnd = revisited_gnd(conf)
        view = revisited_view(dataset, gnd, REVISITED_LEVELS[protocol])
        if not view.query_ids:
            if not conf.landmark.revisited_gnd:
                from retrieval.experiments.ladder.stages import say

                say(f"{gnd}: no query of {dataset.root} is one of its queries: skipping {protocol}")
                continue
            raise DatasetError(f"{gnd}: no query of {dataset.root} is a query of this revisited ground truth")
        m = view.metadata
        title = (f"{name} {protocol} ({gnd.name}: {RESTRICTED_NOTE}, {m['gnd_images_present']} of "
                 f"{m['gnd_images']} images, {len(view.query_ids)} of {m['gnd_queries']} queries)")
        out.append(Relevance(title, view, "oxford", "oxford_map", label=f"{REVISITED_LEVELS[protocol].capitalize()} mAP"))
    return out
