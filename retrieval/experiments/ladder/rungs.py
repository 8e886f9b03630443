"""The re-ranking rungs, the same on both halves of the ladder (they re-rank the half's base
ranking: E4 on object data, E1 on landmark data):

* E5  RootSIFT ratio-test score (a count of matches, :class:`retrieval.rerank.ratio.RatioTestScorer`);
* E6  RootSIFT VLAD similarity (k words: :class:`retrieval.rerank.vlad.VladSimilarityScorer`);
* E7  EfficientNet patch tokens (mean of each query patch's best cosine, :class:`retrieval.rerank.patch.PatchScorer`);
* SV  spatial verification (inliers of an affine RANSAC, :class:`retrieval.rerank.spatial.SpatialVerifier`);
* ASMK (opt-in) the ASMK* similarity over the spatial-verification RootSIFT (:class:`retrieval.rerank.asmk.AsmkScorer`,
  the paper's kernel: query descriptors on their 5 nearest words, alpha 3, tau 0);
* E8  alpha-QE and DBA of the base global vectors (:mod:`retrieval.rerank.expansion`).

Each returns ``(candidates, rankings, seconds)`` for :func:`retrieval.steps.choose.choose`: local scores are
fused on an absolute scale (counts saturating at T, or the DELG rule; similarities as they are:
:meth:`retrieval.rerank.fusion.FusionSettings.candidates`), expansions over a grid of (n, alpha)
(:mod:`retrieval.steps.expand`); the base ranking
is always the first candidate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from retrieval.steps.choose import fusion_rankings

from retrieval.experiments.ladder.settings import LadderConfig
from retrieval.experiments.ladder.stages import RunCache, extract_local, extractor, preload, remove, score_local, shortlisted_images

__all__ = ["Half", "RERANK_NOTES", "rerank_note", "rung_e5", "rung_e6", "rung_e7", "rung_sv", "rung_asmk", "rung_e8"]

PATCH_METHOD = "mean_max"
RATIO = 0.8
#: the ASMK paper's query-side multiple assignment (database descriptors take one word)
ASMK_QUERY_ASSIGNMENT = 5


@dataclass
class Half:
    """One half of the ladder as the re-rankers see it."""

    kind: str                      # "object" | "landmark"
    dataset: object
    name: str
    folder: Path                   # this half's cache folder
    prefix: str                    # stage-name prefix ("" | "landmark ")
    base: str                      # the rung re-ranked: "E4" | "E1"
    db_vectors: np.ndarray
    query_vectors: np.ndarray
    shortlist: object
    shortlist_path: Path
    sift: str
    spatial_sift: str
    spatial: str
    vlad_words: int
    patch_extractor: object
    vlad_images: Callable[[], Tuple[List[str], List, str]]   # (ids, paths, description) for the codebook
    full_ranking: bool             # landmark AP needs every database image ranked
    sift_path: Path = None
    stores: Dict[str, dict] = field(default_factory=dict)
    asmk_words: int = 1024
    asmk_sample: int = 100_000

    def seconds(self, cache: RunCache, *stages: str) -> float:
        return cache.timer.total(*(self.prefix + s for s in stages))


RERANK_NOTES = {"E5": "RootSIFT ratio test", "E6": "RootSIFT VLAD", "E7": "patch tokens",
                "SV": "spatial verification (RootSIFT, affine RANSAC inliers)",
                "ASMK": "ASMK* (RootSIFT, binarised residuals, selective kernel)",
                "E8 alpha-QE": "alpha query expansion", "E8 DBA": "database-side augmentation",
                "E8 DBA+alpha-QE": "DBA then alpha-QE"}


def rerank_note(exp: str, half: "Half") -> str:
    """The results' note for re-ranker ``exp``: :data:`RERANK_NOTES`, naming the local features instead of
    "RootSIFT" where the half's setting is not a RootSIFT configuration (``spatial_sift=xfeat-4k``)."""
    note = RERANK_NOTES[exp]
    features = {"E5": half.sift, "E6": half.sift, "SV": half.spatial_sift, "ASMK": half.spatial_sift}.get(exp)
    if features is not None and not _is_rootsift(features):
        note = note.replace("RootSIFT", features)
    return note


def _is_rootsift(name: str) -> bool:
    from retrieval.features.local_extractors import split_config_name
    from retrieval.features.sift import SIFT_CONFIGS

    base = split_config_name(name)[0]
    return base in SIFT_CONFIGS and SIFT_CONFIGS[base].root


def features_label(name: str, what: str = "") -> str:
    """How progress bars name local features ``name``: "RootSIFT rootsift-2k", "xfeat-4k" (no "RootSIFT"
    on learned features), with ``what`` in brackets."""
    label = f"RootSIFT {name}" if _is_rootsift(name) else name
    return f"{label} ({what})" if what else label


def _candidates(conf: LadderConfig, kind: str) -> Dict[str, object]:
    return {c.label: c for c in conf.fusion.candidates(kind)}


def _sift_store(half: Half, conf: LadderConfig, cache: RunCache, sift_name: str, file: str) -> Tuple[object, Path]:
    """RootSIFT ``sift_name`` of what the re-rankers read: on landmark data every image (the VLAD
    codebook is learned on the database), on object data the queries and shortlisted images."""
    sift = extractor("local", sift_name, cache)
    path = half.folder / file
    cache.fresh("sift", path)
    ds = half.dataset
    if half.kind == "landmark":
        images = ([str(i) for i in ds.db_ids] + [str(q) for q in ds.query_ids], list(ds.db_paths) + list(ds.query_paths),
                  [None] * len(ds.db_ids) + list(ds.query_boxes or [None] * len(ds.query_ids)))
    else:
        images = shortlisted_images(ds, half.shortlist)
    extract_local(sift, images, path, cache, half.prefix + f"sift {sift_name}", features_label(sift_name))
    return sift, path


def _features(half: Half, cache: RunCache, path: Path, stage: str, pending: bool, dtype=np.float32) -> dict:
    """The preloaded ``{id: LocalFeatures}`` of ``path`` (read once per run, and only when needed)."""
    key = str(path)
    if key not in half.stores and pending:
        with cache.stage(half.prefix + stage):
            half.stores[key] = preload(path, half.shortlist, dtype, progress=cache.progress)
    return half.stores.get(key, {})


def rung_e5(half: Half, conf: LadderConfig, cache: RunCache):
    from retrieval.rerank.ratio import RatioTestScorer

    sift, path = _sift_store(half, conf, cache, half.sift, "sift.h5")
    half.sift_path = path
    if "sift" in cache.recompute:
        half.shortlist.local.pop("ratio", None)
    store = _features(half, cache, path, "read sift", bool(half.shortlist.pending("ratio")))
    score_local(half.shortlist, half.shortlist_path, RatioTestScorer(ratio=RATIO), "ratio", store, cache,
                half.prefix + "score E5")
    seconds = half.seconds(cache, f"sift {half.sift}", "read sift", "score E5")
    return _candidates(conf, "count"), fusion_rankings(half.shortlist, "ratio"), seconds


def _vlad_encoder(half: Half, conf: LadderConfig, cache: RunCache, sift):
    from retrieval.features.encoders.vlad import VladEncoder
    from retrieval.features.store import LocalFeatureStore

    vlad_dir = half.folder / "vlad"
    cache.fresh("vlad", vlad_dir)
    enc_path = vlad_dir / "encoder.npz"
    if enc_path.is_file():
        return VladEncoder.load(enc_path)
    ids, paths, what = half.vlad_images()
    with cache.stage(half.prefix + "vlad codebook"):
        if half.kind == "landmark":
            store_path = half.sift_path
        else:
            store_path = vlad_dir / "sift_train.h5"
            cache.extract("local", sift, ids, paths, None, store_path, features_label(half.sift, "codebook images"))
        with LocalFeatureStore(store_path, mode="r") as store:
            feats = [store.get(i) for i in ids]
        encoder = VladEncoder(k=half.vlad_words, trained_on=what).fit(feats)
        encoder.save(enc_path)
    return encoder


def rung_e6(half: Half, conf: LadderConfig, cache: RunCache):
    from retrieval.rerank.vlad import VladSimilarityScorer

    sift, path = _sift_store(half, conf, cache, half.sift, "sift.h5")
    half.sift_path = path
    if "vlad" in cache.recompute:
        half.shortlist.local.pop("vlad", None)
    encoder = _vlad_encoder(half, conf, cache, sift)
    store = _features(half, cache, path, "read sift", bool(half.shortlist.pending("vlad")))
    score_local(half.shortlist, half.shortlist_path, VladSimilarityScorer(encoder), "vlad", store, cache,
                half.prefix + "score E6")
    seconds = half.seconds(cache, f"sift {half.sift}", "read sift", "vlad codebook", "score E6")
    return _candidates(conf, "similarity"), fusion_rankings(half.shortlist, "vlad"), seconds


def rung_e7(half: Half, conf: LadderConfig, cache: RunCache):
    from retrieval.rerank.patch import PatchScorer

    path = half.folder / ("patch_e4.h5" if half.kind == "object" else "patch_e1.h5")
    scorer = PatchScorer(PATCH_METHOD)
    if "patch" in cache.recompute:
        remove(path)
        half.shortlist.local.pop(scorer.name, None)
    extract_local(half.patch_extractor, shortlisted_images(half.dataset, half.shortlist), path, cache,
                  half.prefix + "patches", f"patch tokens ({half.base})", patches=True)
    store = _features(half, cache, path, "read patches", bool(half.shortlist.pending(scorer.name)), np.float16)
    score_local(half.shortlist, half.shortlist_path, scorer, scorer.name, store, cache, half.prefix + "score E7")
    half.stores.pop(str(path), None)
    seconds = half.seconds(cache, "patches", "read patches", "score E7")
    return _candidates(conf, "similarity"), fusion_rankings(half.shortlist, scorer.name), seconds


def rung_sv(half: Half, conf: LadderConfig, cache: RunCache):
    from retrieval.rerank.spatial import SPATIAL_CONFIGS, SpatialVerifier

    verifier = SpatialVerifier(SPATIAL_CONFIGS.get(half.spatial))
    file = "sift.h5" if half.spatial_sift == half.sift else f"sift_{half.spatial_sift}.h5"
    _, path = _sift_store(half, conf, cache, half.spatial_sift, file)
    # the scores depend on the features as much as on the matcher: a run with other spatial_sift must not
    # reuse the cached inlier counts of the previous features
    name = f"inliers:{half.spatial}@{half.spatial_sift}"
    store = _features(half, cache, path, f"read sift {half.spatial_sift}", bool(half.shortlist.pending(name)))
    score_local(half.shortlist, half.shortlist_path, verifier, name, store,
                cache, half.prefix + "score SV")
    seconds = half.seconds(cache, f"sift {half.spatial_sift}", f"read sift {half.spatial_sift}", "score SV")
    return _candidates(conf, "count"), fusion_rankings(half.shortlist, name), seconds


def _asmk_key(half: Half) -> str:
    """What the ASMK rung's cached codebook and scores depend on."""
    return f"{half.spatial_sift}_{half.asmk_words}_{half.asmk_sample}"


def _asmk_encoder(half: Half, cache: RunCache, sift, store_path: Path):
    """The ASMK* codebook: learned on the database descriptors (landmark data, as VLAD's) or on the
    training images (object data), cached in the half's ``asmk/`` folder."""
    from retrieval.features.encoders.asmk import AsmkEncoder
    from retrieval.features.store import LocalFeatureStore

    asmk_dir = half.folder / "asmk"
    cache.fresh("asmk", asmk_dir)
    enc_path = asmk_dir / f"encoder_{_asmk_key(half)}.npz"
    if enc_path.is_file():
        encoder = AsmkEncoder.load(enc_path)
    else:
        ids, paths, what = half.vlad_images()
        with cache.stage(half.prefix + "asmk codebook"):
            if half.kind != "landmark":
                store_path = asmk_dir / f"sift_train_{half.spatial_sift}.h5"
                cache.extract("local", sift, ids, paths, None, store_path,
                              features_label(half.spatial_sift, "codebook images"))
            with LocalFeatureStore(store_path, mode="r") as store:
                feats = [store.get(i) for i in ids]
            encoder = AsmkEncoder(k=half.asmk_words).fit(feats, n_sample=half.asmk_sample, trained_on=what,
                                                         n_threads=1)
            asmk_dir.mkdir(parents=True, exist_ok=True)
            encoder.save(enc_path)
    encoder.query_assignment = ASMK_QUERY_ASSIGNMENT
    return encoder


def rung_asmk(half: Half, conf: LadderConfig, cache: RunCache):
    from retrieval.rerank.asmk import AsmkScorer

    file = "sift.h5" if half.spatial_sift == half.sift else f"sift_{half.spatial_sift}.h5"
    sift, path = _sift_store(half, conf, cache, half.spatial_sift, file)
    name = f"asmk:{_asmk_key(half)}"
    if "asmk" in cache.recompute:
        half.shortlist.local.pop(name, None)
    encoder = _asmk_encoder(half, cache, sift, path)
    store = _features(half, cache, path, f"read sift {half.spatial_sift}", bool(half.shortlist.pending(name)))
    score_local(half.shortlist, half.shortlist_path, AsmkScorer(encoder), name, store, cache,
                half.prefix + "score ASMK")
    seconds = half.seconds(cache, f"sift {half.spatial_sift}", f"read sift {half.spatial_sift}", "asmk codebook",
                           "score ASMK")
    return _candidates(conf, "similarity"), fusion_rankings(half.shortlist, name), seconds


def rung_e8(half: Half, conf: LadderConfig, cache: RunCache, mode: str):
    """E8: ``mode`` 'alpha-QE', 'DBA' or 'DBA+alpha-QE' over the (n, alpha) grid
    (:mod:`retrieval.steps.expand`); a candidate is ``(n, alpha)``, ``None`` the base ranking."""
    from retrieval.steps.expand import expansion_candidates, expansion_rankings

    ds = half.dataset
    k = len(ds.db_ids) if half.full_ranking else min(conf.shortlist, len(ds.db_ids))
    rankings = expansion_rankings(mode, half.db_vectors, half.query_vectors, ds.db_ids, ds.query_ids, k)
    return expansion_candidates(conf.expansion), rankings, 0.0
