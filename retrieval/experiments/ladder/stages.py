"""The ladder's resumable stages: the run cache and its timer, global descriptors, exact search, the
cached shortlist, local features of what the shortlists hold, and local scoring. Extraction is the
pipeline's (:func:`retrieval.steps.image_features.extract_into`, as in ``retrieval run``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from retrieval.core.report import StageTimer
from retrieval.steps.image_features import extract_into, make_extractor, remove

__all__ = ["RunCache", "say", "remove", "extractor", "global_features", "rank", "build_shortlist",
           "shortlisted_images", "extract_local", "preload", "score_local"]


def say(text: str) -> None:
    print(f"[ladder {time.strftime('%H:%M:%S')}] {text}", flush=True)


class RunCache:
    """A run's cache folder (``<cache>/full`` or ``<cache>/quick``), its persistent stage timer
    (``timings.json``), the stages to recompute, and the run-wide extraction options."""

    def __init__(self, root: Path, recompute: Sequence[str] = (), n_jobs: int = 2, progress: bool = True,
                 device: str = "auto", backend: str = "auto", engine: str = "local",
                 ray_address: Optional[str] = None):
        self.root = Path(root)
        self.timer = StageTimer(self.root / "timings.json")
        self.recompute = tuple(recompute)
        self.n_jobs, self.progress, self.device, self.backend = n_jobs, progress, device, backend
        self.engine, self.ray_address = engine, ray_address

    def stage(self, name: str):
        return self.timer(name)

    def fresh(self, stage: str, *paths) -> None:
        """Delete ``paths`` when ``stage`` is to be recomputed."""
        if stage in self.recompute:
            remove(*paths)

    @property
    def runtime(self) -> dict:
        """How this run builds EfficientNet networks (here and in Ray workers)."""
        return {"backend": self.backend, "device": self.device}

    def extract(self, kind: str, extractor, ids, paths, boxes, path: Path, desc: str) -> int:
        """Images computed now by :func:`retrieval.steps.image_features.extract_into` with this run's
        engine and workers."""
        run = extract_into(kind, extractor, ids, paths, boxes, path, engine=self.engine, n_jobs=self.n_jobs,
                           ray_address=self.ray_address, progress=self.progress, desc=desc,
                           runtime=self.runtime, say=say)
        return int(getattr(run, "computed", 0) or 0)


def extractor(kind: str, config, cache: RunCache, **overrides):
    """An EfficientNet (``global`` / ``patches``) or SIFT (``local``) extractor built as this run builds
    them (:func:`retrieval.steps.image_features.make_extractor`)."""
    runtime = cache.runtime if kind != "local" else {}
    return make_extractor(kind, config, overrides, **runtime)


def _ordered(ids: List[str], vectors: np.ndarray, wanted: Sequence[str], path: Path) -> np.ndarray:
    pos = {i: n for n, i in enumerate(ids)}
    missing = [w for w in wanted if w not in pos]
    if missing:
        from retrieval.features.store import FeatureFileError

        raise FeatureFileError(path, f"lacks {len(missing)} image(s), e.g. {missing[:3]}")
    return vectors[[pos[w] for w in wanted]]


def global_features(extractor, dataset, folder: Path, name: str, cache: RunCache, stage: str
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(database vectors, query vectors) in dataset order, from ``folder/<name>_{index,queries}.h5``
    (extracted when missing; queries cropped to their boxes when the dataset has them)."""
    from retrieval.features.store import load_global

    out = []
    for split, ids, paths, boxes in (("index", dataset.db_ids, dataset.db_paths, None),
                                     ("queries", dataset.query_ids, dataset.query_paths, dataset.query_boxes)):
        path = folder / f"{name}_{split}.h5"
        with cache.stage(stage) as st:
            st.computed = cache.extract("global", extractor, ids, paths, boxes, path, f"{name} {split}") > 0
        got_ids, vectors, _ = load_global(path, expect_config=extractor.config)
        out.append(_ordered(got_ids, vectors, [str(i) for i in ids], path))
    return out[0], out[1]


def rank(db_vectors: np.ndarray, query_vectors: np.ndarray, dataset, k: int):
    """Exact cosine top-``k`` of every query (:class:`retrieval.Index`)."""
    from retrieval import Index

    index = Index(db_vectors, ids=[str(i) for i in dataset.db_ids])
    return index.search(query_vectors, k=min(k, len(dataset.db_ids)), query_ids=[str(q) for q in dataset.query_ids])


def build_shortlist(ranking, path: Path, config: dict, k: int, recompute: bool):
    """The cached :class:`retrieval.rerank.shortlist.Shortlist` of ``ranking``'s top ``k`` (the rest as tail),
    reopened when it exists with the same configuration (its local scores kept)."""
    from retrieval.features.store import FeatureFileError
    from retrieval.rerank.shortlist import Shortlist

    if recompute:
        remove(*Shortlist.paths(path))
    if Shortlist.exists(path):
        try:
            cached = Shortlist.load(path, expect_config=config)
            if ranking.query_ids is None or cached.query_ids == [str(q) for q in ranking.query_ids]:
                return cached
            say(f"shortlist cache {path} has other queries ({len(cached.query_ids)}); rebuilding")
        except FeatureFileError as exc:
            say(f"shortlist cache not reusable ({exc}); rebuilding")
    shortlist = Shortlist.from_ranking(ranking, k=k, config=config)
    shortlist.save(path)
    return shortlist


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


def extract_local(extractor, images: Tuple[List[str], List, Optional[List]], path: Path, cache: RunCache,
                  stage: str, desc: str, patches: bool = False) -> Path:
    """Local features (``extractor``: SIFT, or EfficientNet patch tokens with ``patches``) of
    ``images`` = (ids, paths, boxes) into ``path`` (resumable)."""
    ids, paths, boxes = images
    with cache.stage(stage) as st:
        st.computed = cache.extract("patches" if patches else "local", extractor, ids, paths, boxes, path, desc) > 0
    return path


def preload(store_path: Path, shortlist, dtype=np.float32, extra_ids: Sequence[str] = (), progress: bool = True):
    """``{id: LocalFeatures}`` of the shortlist's queries and shortlisted images (plus ``extra_ids``),
    read once: scoring then looks each image up ~k times without going back to HDF5."""
    from tqdm.auto import tqdm

    from retrieval.features.store import LocalFeatureStore

    ids = list(dict.fromkeys([*shortlist.query_ids, *np.unique(shortlist.db_ids).tolist(), *extra_ids]))
    with LocalFeatureStore(store_path, mode="r") as store:
        return {i: store.get(i, dtype=dtype) for i in tqdm(ids, desc=f"read {Path(store_path).name}",
                                                           disable=not progress, leave=False)}


def score_local(shortlist, path: Path, scorer, name: str, features, cache: RunCache, stage: str) -> None:
    """Local scores ``name`` of every pending shortlist row (``features``: ``{id: LocalFeatures}``),
    saved into the shortlist cache as they come (resumable)."""
    with cache.stage(stage) as st:
        st.computed = bool(shortlist.pending(name))
        shortlist.score_with(scorer, features, features, name=name, path=path, progress=cache.progress,
                             engine=cache.engine, n_jobs=cache.n_jobs, ray_address=cache.ray_address)
