"""The method rows of the classical protocol (:mod:`retrieval.experiments.classical`): cached codebooks and
GMMs, BoW (inverted file), VLAD (plain, multiple assignment, PCA-whitened) and Fisher vectors, each
encoded, searched and scored with the dataset's protocol into one result row."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from retrieval.datasets.dataset import RetrievalDataset
from retrieval.evaluation.evaluate import evaluate, required_depth
from retrieval.features.codebook import Codebook, learn_codebook
from retrieval.features.encoders import BowEncoder, BowInvertedIndex, FisherEncoder, VladEncoder
from retrieval.features.local import LocalFeatures
from retrieval.features.whitening import PCAWhitening
from retrieval.indexing.index import Index

__all__ = ["MAIN_METRIC", "Searched", "cached_codebook", "cached_fisher", "indexable", "method_rows"]

#: the figure of each evaluation protocol that the ``mAP`` column reports
MAIN_METRIC = {"oxford": "oxford_map", "revisited": "revisited_map_medium", "landmark": "landmark_map",
               "gldv2": "map@100", "general": "map@100", "all": "map@100"}

#: how each vocabulary size is learned: descriptors sampled, k-means iterations, cap per centroid
CODEBOOK_SETTINGS = {
    "small": {"n_sample": 300_000, "niter": 20, "max_points_per_centroid": 5000},   # k <= 256
    "medium": {"n_sample": 500_000, "niter": 15, "max_points_per_centroid": 500},   # k ~ 1k
    "large": {"n_sample": 500_000, "niter": 8, "max_points_per_centroid": 25},      # k ~ 20k
}


@dataclass
class Searched:
    """One dataset as the methods see it: the dataset, its display ``name``, the evaluation
    ``protocol``, database and query features (dataset order) and their extraction ``info``."""

    ds: RetrievalDataset
    name: str
    protocol: str
    db: List[LocalFeatures]
    queries: List[LocalFeatures]
    info: dict

    @property
    def depth(self) -> int:
        """Results per query the protocol needs (:func:`retrieval.evaluation.evaluate.required_depth`), plus the
        most junk one query has (junk is dropped before the cut-off metrics see the ranking)."""
        n = len(self.ds.db_ids)
        need = required_depth(self.ds, self.protocol, 100)
        junk = max((len(t.junk) for t in self.ds.ground_truth.values()), default=0)
        return n if need >= n else min(n, need + junk)


def _settings_for(k: int, quick: bool) -> dict:
    s = dict(CODEBOOK_SETTINGS["small" if k <= 256 else "medium" if k <= 4096 else "large"])
    if quick:
        s["n_sample"] = min(s["n_sample"], 50_000)
        s["niter"] = min(s["niter"], 10)
    return s


def cached_codebook(folder: Path, feats: Sequence[LocalFeatures], k: int, trained_on: str, quick: bool, seed: int,
                    faiss_threads: Optional[int]) -> Codebook:
    """The k-word codebook of ``feats`` (learned once, then read from ``folder``)."""
    s = _settings_for(k, quick)
    path = folder / f"k{k}-n{s['n_sample']}-it{s['niter']}-m{s['max_points_per_centroid']}-s{seed}.npz"
    if path.is_file():
        return Codebook.load(path)
    cb = learn_codebook(feats, k, seed=seed, metadata={"trained_on": trained_on}, n_threads=faiss_threads, **s)
    per_word = cb.config.get("points_per_word")
    if per_word is not None and per_word < 39:
        print(f"  note: the {k}-word codebook learned from {cb.config['n_train']:,} descriptors, {per_word:g} per "
              "word (k-means wants about 39): its words are noisier; more images or a smaller k steady them",
              flush=True)
    cb.save(path)
    return cb


def cached_fisher(folder: Path, feats: Sequence[LocalFeatures], k: int, trained_on: str, quick: bool,
                  seed: int) -> FisherEncoder:
    """The k-component Fisher encoder (PCA 64) of ``feats`` (fitted once, then read from ``folder``)."""
    # EM on a diagonal GMM is the slowest learning step here (scikit-learn, O(n k d) per iteration):
    # 100k descriptors and 25 iterations keep it to a minute or two on 2 cores
    n_sample = 30_000 if quick else 100_000
    max_iter = 15 if quick else 25
    path = folder / f"fisher-k{k}-pca64-n{n_sample}-it{max_iter}-s{seed}.npz"
    if path.is_file():
        return FisherEncoder.load(path)
    enc = FisherEncoder(k=k, pca_dim=64, seed=seed, n_sample=n_sample, gmm_max_iter=max_iter,
                        trained_on=trained_on).fit(feats)
    if not enc.fit_info.get("gmm_converged", True):
        print(f"  note: the {k}-component Fisher GMM stopped after {enc.fit_info['gmm_iterations']} EM iterations "
              f"before converging (tol {enc.tol}); its encoding is used as it is", flush=True)
    enc.save(path)
    return enc


def indexable(vectors: np.ndarray, empty_db: Optional[np.ndarray] = None) -> np.ndarray:
    """:class:`retrieval.Index` refuses all-zero rows (an image without descriptors encodes to the zero
    vector). One extra coordinate, 1 for empty database images and 0 elsewhere, makes them unit vectors
    whose score against every non-empty query is exactly 0, which is the zero vector's meaning."""
    empty = ~np.any(vectors != 0, axis=1) if empty_db is None else empty_db
    out = np.zeros((len(vectors), vectors.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = vectors
    out[empty, -1] = 1.0
    return out


def _search_and_score(s: Searched, db_vectors, query_vectors, inverted: bool):
    """Rank (as deep as the protocol needs) and evaluate; returns (metrics, search seconds)."""
    ds = s.ds
    start = time.perf_counter()
    if inverted:
        ranking = BowInvertedIndex(db_vectors, ids=ds.db_ids).search(query_vectors, k=s.depth, query_ids=ds.query_ids)
    else:
        index = Index(indexable(db_vectors), ids=ds.db_ids)
        ranking = index.search(indexable(query_vectors, np.zeros(len(query_vectors), bool)), k=s.depth,
                               query_ids=ds.query_ids)
    seconds = time.perf_counter() - start
    return evaluate(ds, ranking.to_predictions(), protocol=s.protocol, k=100), seconds


def _score_vectors(s: Searched, label: str, dim: int, db_vectors, q_vectors, encode_db_s: float, encode_q_s: float,
                   extras: dict, inverted: bool) -> dict:
    """Search, evaluate and describe one method's vectors as a result row."""
    metrics, search_s = _search_and_score(s, db_vectors, q_vectors, inverted)
    row = {"method": label, "dataset": s.name, "mAP": round(100 * metrics[MAIN_METRIC[s.protocol]], 2),
           "dim": dim, "extract_s_per_image": round(s.info["extract_s_per_image"], 4),
           "encode_db_s": round(encode_db_s, 2),
           "query_s": round((encode_q_s + search_s) / max(1, len(s.ds.query_ids)), 5),
           "metrics": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}}
    row.update(extras)
    print(f"  {label:34s} {s.name:8s} mAP {row['mAP']:6.2f}  dim {dim:6d}  "
          f"encode db {encode_db_s:6.1f}s  query {row['query_s'] * 1000:7.1f} ms", flush=True)
    return row


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _run_method(s: Searched, label: str, encoder, extras: dict) -> dict:
    """Encode, search and evaluate one global encoder; returns its result row."""
    db_vectors, encode_db = _timed(encoder.encode_many, s.db)
    q_vectors, encode_q = _timed(encoder.encode_many, s.queries)
    return _score_vectors(s, label, encoder.dim, db_vectors, q_vectors, encode_db, encode_q, extras, inverted=False)


def _bow_rows(s: Searched, cb: Codebook, extras: dict, soft: bool) -> List[dict]:
    """BoW variants over one codebook, searched with the inverted file. The database and the queries
    are quantised once per assignment mode (hard; soft over 3 words) and the variants (plain tf,
    square-rooted tf against burstiness) re-weight those term frequencies; idf on the database."""
    rows = []
    modes = [("", {})] + ([("+soft3", {"n_nearest": 3, "sigma": 0.2})] if soft else [])
    for mode, assign in modes:
        quantiser = BowEncoder(cb, idf=False, **assign)
        tf_db, quant_db = _timed(quantiser.term_frequencies, s.db)
        tf_q, quant_q = _timed(quantiser.term_frequencies, s.queries)
        for suffix, tf_power in (("", 1.0), ("+sqrt-tf", 0.5)):
            enc = BowEncoder(cb, tf_power=tf_power, **assign).fit_idf_from_tf(
                tf_db, trained_on=f"{s.name} database (idf)")
            db_vectors, weight_db = _timed(enc.weight, tf_db)
            q_vectors, weight_q = _timed(enc.weight, tf_q)
            rows.append(_score_vectors(s, f"RootSIFT+BoW{mode}{suffix} k={cb.k}", enc.dim, db_vectors, q_vectors,
                                       quant_db + weight_db, quant_q + weight_q,
                                       {**extras, "search": "inverted file"}, inverted=True))
    return rows


def _vlad_raw_for(encoder: VladEncoder, feats) -> np.ndarray:
    plain = VladEncoder(encoder.codebook, intra_norm=encoder.intra_norm, power=encoder.power,
                        residual_norm=encoder.residual_norm, n_nearest=encoder.n_nearest, sigma=encoder.sigma)
    return plain.encode_many(feats)


def method_rows(s: Searched, conf, codebooks: Path, whitening: Optional[Tuple[str, List[LocalFeatures]]],
                bow_k: Sequence[int], whiten_dims: Sequence[int]) -> List[dict]:
    """Every method row of one dataset. Codebooks, GMMs and idf come from its own database images
    (unsupervised; ``codebook_trained_on`` says so); ``whitening`` is ``(name, features)`` of OTHER
    images that the VLAD PCA-whitening is learned on, or None (no whitened rows)."""
    trained_on = f"{s.name} database images ({len(s.db)}, unlabelled)"
    common = {"codebook_trained_on": trained_on, "keypoints_per_db_image": round(s.info["keypoints_per_db_image"], 1)}

    def codebook(k):
        return cached_codebook(codebooks, s.db, k, trained_on, conf.quick, conf.seed, conf.faiss_threads)

    rows: List[dict] = []
    for k in bow_k:
        cb = codebook(k)
        rows += _bow_rows(s, cb, {**common, "codebook_seconds": cb.config.get("seconds")},
                          soft=conf.bow_soft and k >= (1000 if conf.quick else 10000))
    for k in conf.vlad_k:
        cb = codebook(k)
        extras = {**common, "codebook_seconds": cb.config.get("seconds")}
        enc = VladEncoder(cb)
        rows.append(_run_method(s, f"RootSIFT+VLAD k={k}", enc, extras))
        # multiple assignment (3 nearest words, Gaussian weights) with normalised residuals
        rows.append(_run_method(s, f"RootSIFT+VLAD+MA3+rn k={k}",
                                VladEncoder(cb, n_nearest=3, sigma=0.2, residual_norm=True), extras))
        if whitening is None or not whiten_dims:
            continue
        # PCA-whitening learned on the other images, encoded with this codebook
        other, other_feats = whitening
        raw_other = _vlad_raw_for(enc, other_feats)
        raw_other = raw_other[np.any(raw_other != 0, axis=1)]
        for dim in whiten_dims:
            white = PCAWhitening(dim=dim, eigen_power=conf.whiten_power, shrinkage=conf.whiten_shrinkage,
                                 max_samples=4000, seed=conf.seed).fit(raw_other, trained_on=f"{other} images")
            rows.append(_run_method(s, f"RootSIFT+VLAD k={k} +PCAw{white.dim}", VladEncoder(cb, whitening=white),
                                    {**common, "whitening_trained_on": f"{other} images ({len(raw_other)})"}))
    for k in conf.fisher_k:
        enc = cached_fisher(codebooks, s.db, k, trained_on, conf.quick, conf.seed)
        rows.append(_run_method(s, f"RootSIFT+Fisher k={k} (PCA64)", enc, common))
    return rows
