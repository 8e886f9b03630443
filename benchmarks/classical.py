"""Classical retrieval benchmark: RootSIFT + BoW / VLAD / Fisher on Oxford5k (annotated subset) and
COIL-100.

Protocols
    * ``oxford5k_subset``: the standard Oxford protocol: queries cropped to their boxes (ground-truth
      boxes scaled by 0.5 to the half-size images), AP over good + ok, junk ignored, full ranking.
    * COIL-100: every 4th image (canonical order) is a query against all the other images
      (:func:`retrieval.datasets.every_nth_query`, the query itself counted as junk), ``map@100`` as
      GLDv2 defines it.

Steps for each dataset (each cached under ``--cache/classical/`` so a rerun resumes):

1. RootSIFT of every image (and of every cropped Oxford query) into a resumable
   :class:`~features.store.LocalFeatureStore` (:func:`features.extract.extract_local_features`);
2. codebooks / GMMs learned on the dataset's own database images (the Oxford baseline's convention:
   unsupervised, no labels; the ``trained_on`` column says so), BoW idf on the database;
3. PCA-whitening of VLAD learned on the OTHER dataset (never on the one searched);
4. encode database and queries, :class:`retrieval.Index` (exact cosine) or, for BoW,
   :class:`features.encoders.BowInvertedIndex`; evaluate with :func:`retrieval.evaluate.evaluate`.

Also measured: SIFT extraction images/s with 1 and 2 workers (threads and loky processes), VLAD and
Fisher encoding descriptors/s against the bare matrix products of the same sizes (the bound), and with
``--kmeans-timing`` the 20k-word codebook on 1M descriptors.

Spatial verification of a landmark shortlist: ``benchmarks/spatial_rerank.py`` (the ladder's SV rung).

    .venv/bin/python benchmarks/classical.py --quick          # small subsets, well under two minutes
    .venv/bin/python benchmarks/classical.py                  # full run
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.features.codebook import Codebook, learn_codebook, sample_descriptors, train_codebook  # noqa: E402
from retrieval.features.encoders import BowEncoder, BowInvertedIndex, FisherEncoder, VladEncoder  # noqa: E402
from retrieval.features.extract import extract_local_features  # noqa: E402
from retrieval.features.local import LocalFeatures  # noqa: E402
from retrieval.features.sift import SiftExtractor  # noqa: E402
from retrieval.features.store import LocalFeatureStore  # noqa: E402
from retrieval.features.whitening import PCAWhitening  # noqa: E402
from retrieval.datasets import every_nth_query, read_labelled_folder, read_oxford  # noqa: E402
from retrieval.datasets.base import RetrievalDataset  # noqa: E402
from retrieval.evaluate import evaluate  # noqa: E402
from retrieval.index import Index  # noqa: E402
from retrieval.paths import data_root  # noqa: E402
from retrieval.report import peak_rss_mb, write_results  # noqa: E402

NAME = "classical"

#: SIFT configuration per dataset (features.sift.SIFT_CONFIGS). Oxford photos are upright, so
#: orientation invariance only costs distinctiveness (upright: VLAD k=64 47.2 -> 56.8 mAP in tuning);
#: COIL's 128 px images are enlarged to 256 px with a low contrast threshold to get ~150 keypoints each,
#: and keep rotation invariance (upright lost 3 points of VLAD k=64 mAP there).
SIFT_FOR = {"oxford": "rootsift-upright-c02-4k", "coil100": "rootsift-small"}

#: how each vocabulary size is learned: descriptors sampled, k-means iterations, cap per centroid
CODEBOOK_SETTINGS = {
    "small": {"n_sample": 300_000, "niter": 20, "max_points_per_centroid": 5000},   # k <= 256
    "medium": {"n_sample": 500_000, "niter": 15, "max_points_per_centroid": 500},   # k ~ 1k
    "large": {"n_sample": 500_000, "niter": 8, "max_points_per_centroid": 25},      # k ~ 20k
}


QUICK_OXFORD_QUERIES = ("ashmolean_1", "christ_church_1", "magdalen_1")


def _settings_for(k: int, quick: bool) -> dict:
    s = dict(CODEBOOK_SETTINGS["small" if k <= 256 else "medium" if k <= 4096 else "large"])
    if quick:
        s["n_sample"] = min(s["n_sample"], 50_000)
        s["niter"] = min(s["niter"], 10)
    return s


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------

def load_datasets(data: Path, quick: bool) -> Dict[str, RetrievalDataset]:
    """Oxford subset and COIL-100 (every 4th image a query). ``quick``: Oxford keeps 3 queries and a
    database of their positives + junk plus every 16th other image; COIL keeps objects 1-8."""
    oxford = read_oxford(data / "oxford5k_subset")
    coil_all = read_labelled_folder(data / "coil100")
    if quick:
        qpos = [i for i, q in enumerate(oxford.query_ids) if q in QUICK_OXFORD_QUERIES]
        qids = [oxford.query_ids[i] for i in qpos]
        related = set().union(*(oxford.ground_truth[q].positives | oxford.ground_truth[q].junk for q in qids))
        others = [d for d in oxford.db_ids if d not in related][::16]
        keep = set(related) | set(others)
        dpos = [i for i, d in enumerate(oxford.db_ids) if d in keep]
        oxford = replace(oxford, db_ids=[oxford.db_ids[i] for i in dpos],
                         db_paths=[oxford.db_paths[i] for i in dpos], query_ids=qids,
                         query_paths=[oxford.query_paths[i] for i in qpos],
                         query_boxes=[oxford.query_boxes[i] for i in qpos],
                         query_labels=[oxford.query_labels[i] for i in qpos] if oxford.query_labels else None,
                         ground_truth={q: oxford.ground_truth[q] for q in qids},
                         db_labels=None, db_metadata={},
                         query_metadata={c: [v[i] for i in qpos] for c, v in oxford.query_metadata.items()},
                         name=oxford.name + "-quick")
        keep_objects = {str(o) for o in range(1, 9)}
        pos = [i for i, label in enumerate(coil_all.db_labels) if str(label) in keep_objects]
        coil_all = replace(coil_all, db_ids=[coil_all.db_ids[i] for i in pos],
                           db_paths=[coil_all.db_paths[i] for i in pos],
                           db_labels=[coil_all.db_labels[i] for i in pos],
                           db_metadata={c: [v[i] for i in pos] for c, v in coil_all.db_metadata.items()},
                           name=coil_all.name + "-quick")
    coil = every_nth_query(coil_all, n=4)
    return {"oxford": oxford, "coil100": coil}


# ------------------------------------------------------------------------------------------------
# local features
# ------------------------------------------------------------------------------------------------

def local_features(name: str, ds: RetrievalDataset, cache: Path, n_jobs: int, progress: bool
                   ) -> Tuple[List[LocalFeatures], List[LocalFeatures], dict]:
    """(database features, query features, info) in dataset order. Oxford queries are the cropped
    query images (own store); COIL queries are database images."""
    extractor = SiftExtractor(SIFT_FOR[name])
    timing_file = cache / "features" / f"{name}-{extractor.name}-timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {"seconds": 0.0, "images": 0}
    parts = [("db", ds.db_ids, ds.db_paths, None)]
    if name == "oxford":
        parts.append(("queries", ds.query_ids, ds.query_paths, ds.query_boxes))
    loaded = {}
    for what, ids, paths, boxes in parts:
        path = cache / "features" / f"{name}-{extractor.name}-{what}.h5"
        res = extract_local_features(ids, paths, extractor, path, n_jobs=n_jobs, boxes=boxes,
                                     progress=progress, desc=f"{name} {what} {extractor.name}")
        if res.computed:
            timing["seconds"] += res.seconds
            timing["images"] += res.computed
        with LocalFeatureStore(path, "r") as store:
            # float16 in memory (half the RAM); encoders convert per batch
            loaded[what] = store.get_many(ids, dtype=None)
    timing_file.parent.mkdir(parents=True, exist_ok=True)
    timing_file.write_text(json.dumps(timing))
    db = loaded["db"]
    if name == "oxford":
        queries = loaded["queries"]
    else:
        row = {d: i for i, d in enumerate(ds.db_ids)}
        queries = [db[row[q]] for q in ds.query_ids]
    info = {"sift": extractor.config,
            "extract_s_per_image": timing["seconds"] / timing["images"] if timing["images"] else float("nan"),
            "keypoints_per_db_image": float(np.mean([len(f) for f in db])),
            "keypoints_per_query": float(np.mean([len(f) for f in queries])),
            "n_empty_db": int(sum(len(f) == 0 for f in db))}
    return db, queries, info


# ------------------------------------------------------------------------------------------------
# learned parts (cached)
# ------------------------------------------------------------------------------------------------

def cached_codebook(cache: Path, tag: str, feats: Sequence[LocalFeatures], k: int, trained_on: str,
                    quick: bool, seed: int, faiss_threads: Optional[int]) -> Codebook:
    s = _settings_for(k, quick)
    path = cache / "codebooks" / f"{tag}-k{k}-n{s['n_sample']}-it{s['niter']}-m{s['max_points_per_centroid']}-s{seed}.npz"
    if path.is_file():
        return Codebook.load(path)
    cb = learn_codebook(feats, k, seed=seed, metadata={"trained_on": trained_on}, n_threads=faiss_threads, **s)
    cb.save(path)
    return cb


def cached_fisher(cache: Path, tag: str, feats: Sequence[LocalFeatures], k: int, trained_on: str,
                  quick: bool, seed: int) -> FisherEncoder:
    # EM on a diagonal GMM is the slowest learning step here (scikit-learn, O(n k d) per iteration):
    # 100k descriptors and 25 iterations keep it to a minute or two on 2 cores
    n_sample = 30_000 if quick else 100_000
    max_iter = 15 if quick else 25
    path = cache / "codebooks" / f"{tag}-fisher-k{k}-pca64-n{n_sample}-it{max_iter}-s{seed}.npz"
    if path.is_file():
        return FisherEncoder.load(path)
    enc = FisherEncoder(k=k, pca_dim=64, seed=seed, n_sample=n_sample, gmm_max_iter=max_iter,
                        trained_on=trained_on).fit(feats)
    enc.save(path)
    return enc


# ------------------------------------------------------------------------------------------------
# search and evaluation
# ------------------------------------------------------------------------------------------------

def indexable(vectors: np.ndarray, empty_db: Optional[np.ndarray] = None) -> np.ndarray:
    """:class:`retrieval.Index` refuses all-zero rows (an image without descriptors encodes to the zero
    vector). One extra coordinate, 1 for empty database images and 0 elsewhere, makes them unit vectors
    whose score against every non-empty query is exactly 0, which is the zero vector's meaning."""
    empty = ~np.any(vectors != 0, axis=1) if empty_db is None else empty_db
    out = np.zeros((len(vectors), vectors.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = vectors
    out[empty, -1] = 1.0
    return out


def protocol_of(name: str) -> Tuple[str, str]:
    return ("oxford", "oxford_map") if name == "oxford" else ("gldv2", "map@100")


def search_and_score(name: str, ds: RetrievalDataset, db_vectors, query_vectors, inverted: bool):
    """Rank and evaluate; returns (metrics, search seconds, ranking)."""
    protocol, _ = protocol_of(name)
    k = len(ds.db_ids) if protocol == "oxford" else min(len(ds.db_ids), 101)
    start = time.perf_counter()
    if inverted:
        ranking = BowInvertedIndex(db_vectors, ids=ds.db_ids).search(query_vectors, k=k, query_ids=ds.query_ids)
    else:
        index = Index(indexable(db_vectors), ids=ds.db_ids)
        ranking = index.search(indexable(query_vectors, np.zeros(len(query_vectors), bool)), k=k,
                               query_ids=ds.query_ids)
    seconds = time.perf_counter() - start
    metrics = evaluate(ds, ranking.to_predictions(), protocol=protocol)
    return metrics, seconds, ranking


def score_vectors(name: str, ds: RetrievalDataset, label: str, dim: int, db_vectors, q_vectors,
                  encode_db_s: float, encode_q_s: float, info: dict, extras: dict, inverted: bool) -> dict:
    """Search, evaluate and describe one method's vectors as a result row."""
    _, main_metric = protocol_of(name)
    metrics, search_s, _ = search_and_score(name, ds, db_vectors, q_vectors, inverted)
    row = {"method": label, "dataset": name, "mAP": round(100 * metrics[main_metric], 2),
           "dim": dim, "extract_s_per_image": round(info["extract_s_per_image"], 4),
           "encode_db_s": round(encode_db_s, 2),
           "query_s": round((encode_q_s + search_s) / max(1, len(ds.query_ids)), 5),
           "metrics": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}}
    row.update(extras)
    print(f"  {label:34s} {name:8s} mAP {row['mAP']:6.2f}  dim {dim:6d}  "
          f"encode db {encode_db_s:6.1f}s  query {row['query_s'] * 1000:7.1f} ms", flush=True)
    return row


def run_method(name: str, ds: RetrievalDataset, label: str, encoder, db_feats, q_feats, info: dict,
               extras: dict) -> Tuple[dict, np.ndarray, np.ndarray]:
    """Encode, search, evaluate one global encoder; returns (result row, db vectors, query vectors)."""
    t0 = time.perf_counter()
    db_vectors = encoder.encode_many(db_feats)
    encode_db = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_vectors = encoder.encode_many(q_feats)
    encode_q = time.perf_counter() - t0
    row = score_vectors(name, ds, label, encoder.dim, db_vectors, q_vectors, encode_db, encode_q, info,
                        extras, inverted=False)
    return row, db_vectors, q_vectors


def bow_rows(name: str, ds: RetrievalDataset, cb: Codebook, db_feats, q_feats, info: dict, extras: dict,
             soft: bool) -> List[dict]:
    """BoW variants over one codebook, searched with the inverted file. The database and the queries
    are quantised once per assignment mode (hard; soft over 3 words) and the variants (plain tf,
    square-rooted tf against burstiness) re-weight those term frequencies; idf on the database."""
    rows = []
    modes = [("", {})] + ([("+soft3", {"n_nearest": 3, "sigma": 0.2})] if soft else [])
    for mode, assign in modes:
        quantiser = BowEncoder(cb, idf=False, **assign)
        t0 = time.perf_counter()
        tf_db = quantiser.term_frequencies(db_feats)
        quant_db = time.perf_counter() - t0
        t0 = time.perf_counter()
        tf_q = quantiser.term_frequencies(q_feats)
        quant_q = time.perf_counter() - t0
        for suffix, tf_power in (("", 1.0), ("+sqrt-tf", 0.5)):
            enc = BowEncoder(cb, tf_power=tf_power, **assign).fit_idf_from_tf(
                tf_db, trained_on=f"{name} database (idf)")
            t0 = time.perf_counter()
            db_vectors = enc.weight(tf_db)
            weight_db = time.perf_counter() - t0
            t0 = time.perf_counter()
            q_vectors = enc.weight(tf_q)
            weight_q = time.perf_counter() - t0
            rows.append(score_vectors(name, ds, f"RootSIFT+BoW{mode}{suffix} k={cb.k}", enc.dim, db_vectors,
                                      q_vectors, quant_db + weight_db, quant_q + weight_q, info,
                                      {**extras, "search": "inverted file"}, inverted=True))
    return rows


def _vlad_raw_for(encoder: VladEncoder, feats) -> np.ndarray:
    plain = VladEncoder(encoder.codebook, intra_norm=encoder.intra_norm, power=encoder.power,
                        residual_norm=encoder.residual_norm, n_nearest=encoder.n_nearest, sigma=encoder.sigma)
    return plain.encode_many(feats)


def dataset_rows(name: str, ds: RetrievalDataset, feats: Dict[str, tuple], args, cache: Path,
                 vocab_bow: Sequence[int], vocab_vlad: Sequence[int], vocab_fisher: Sequence[int]
                 ) -> List[dict]:
    db, queries, info = feats[name]
    other = "coil100" if name == "oxford" else "oxford"
    other_db = feats[other][0]
    tag = f"{name}{'-quick' if args.quick else ''}-{SIFT_FOR[name]}"
    trained_on = f"{name} database images ({len(db)}, unlabelled)"
    rows: List[dict] = []
    common = {"codebook_trained_on": trained_on, "keypoints_per_db_image": round(info["keypoints_per_db_image"], 1)}

    for k in vocab_bow:
        cb = cached_codebook(cache, tag, db, k, trained_on, args.quick, args.seed, args.faiss_threads)
        rows += bow_rows(name, ds, cb, db, queries, info, {**common, "codebook_seconds": cb.config.get("seconds")},
                         soft=args.bow_soft and k >= (1000 if args.quick else 10000))

    for k in vocab_vlad:
        cb = cached_codebook(cache, tag, db, k, trained_on, args.quick, args.seed, args.faiss_threads)
        enc = VladEncoder(cb)
        row, _, _ = run_method(name, ds, f"RootSIFT+VLAD k={k}", enc, db, queries, info,
                               {**common, "codebook_seconds": cb.config.get("seconds")})
        rows.append(row)
        # multiple assignment (3 nearest words, Gaussian weights) with normalised residuals
        row, _, _ = run_method(name, ds, f"RootSIFT+VLAD+MA3+rn k={k}",
                               VladEncoder(cb, n_nearest=3, sigma=0.2, residual_norm=True), db, queries, info,
                               {**common, "codebook_seconds": cb.config.get("seconds")})
        rows.append(row)
        # PCA-whitening learned on the other dataset's images, encoded with this codebook
        raw_other = _vlad_raw_for(enc, other_db)
        raw_other = raw_other[np.any(raw_other != 0, axis=1)]
        for dim in args.whiten_dims:
            white = PCAWhitening(dim=dim, eigen_power=args.whiten_power, shrinkage=args.whiten_shrinkage,
                                 max_samples=4000, seed=args.seed).fit(raw_other, trained_on=f"{other} images")
            wenc = VladEncoder(cb, whitening=white)
            row, _, _ = run_method(name, ds, f"RootSIFT+VLAD k={k} +PCAw{white.dim}", wenc, db, queries, info,
                                   {**common, "whitening_trained_on": f"{other} images ({len(raw_other)})"})
            rows.append(row)

    for k in vocab_fisher:
        enc = cached_fisher(cache, tag, db, k, trained_on, args.quick, args.seed)
        row, _, _ = run_method(name, ds, f"RootSIFT+Fisher k={k} (PCA64)", enc, db, queries, info, common)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# speed measurements
# ------------------------------------------------------------------------------------------------

def extraction_speed(ds: RetrievalDataset, n_images: int) -> List[dict]:
    """SIFT images/s on the same Oxford images with 1 and 2 workers (threads, loky processes)."""
    ids, paths = ds.db_ids[:n_images], ds.db_paths[:n_images]
    extractor = SiftExtractor(SIFT_FOR["oxford"])
    rows = []
    for n_jobs, backend in ((1, "threading"), (2, "threading"), (2, "loky")):
        with tempfile.TemporaryDirectory() as tmp:
            res = extract_local_features(ids, paths, extractor, Path(tmp) / "s.h5", n_jobs=n_jobs,
                                         backend=backend, progress=False)
        rows.append({"what": f"SIFT extraction ({extractor.name})", "workers": n_jobs, "backend": backend,
                     "images": len(ids), "images_per_s": round(len(ids) / res.seconds, 2)})
        print(f"  extraction {n_jobs} x {backend:9s}: {rows[-1]['images_per_s']:6.2f} images/s", flush=True)
    return rows


def _best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def encoding_speed(db: Sequence[LocalFeatures], vlad: VladEncoder, fisher: FisherEncoder, n_desc: int) -> List[dict]:
    """Descriptors/s of VLAD and Fisher encoding against the bare matrix products of the same sizes."""
    take, total = [], 0
    for f in db:
        take.append(f)
        total += len(f)
        if total >= n_desc:
            break
    x = np.concatenate([f.descriptors for f in take]).astype(np.float32)
    n = len(x)
    rows = []
    # VLAD bound: the assignment GEMM (n x D) @ (D x k)
    c_t = np.ascontiguousarray(vlad.codebook.centroids.T)
    t_enc = _best_of(lambda: vlad.encode_many(take))
    t_gemm = _best_of(lambda: x @ c_t)
    rows.append({"what": f"VLAD k={vlad.k} encoding", "descriptors": n,
                 "descriptors_per_s": round(n / t_enc), "bound_descriptors_per_s": round(n / t_gemm),
                 "fraction_of_bound": round(t_gemm / t_enc, 3)})
    # Fisher bound: PCA projection, the log-likelihood GEMM (n x 2d) @ (2d x k), statistics (k x n) @ (n x 2d)
    d, k = fisher.model_dim, fisher.k
    proj = np.ascontiguousarray(fisher.pca_components.T)
    a = np.ascontiguousarray(np.random.default_rng(0).random((2 * d, k), dtype=np.float32))
    y2 = np.ascontiguousarray(np.random.default_rng(1).random((n, 2 * d), dtype=np.float32))
    g = np.ascontiguousarray(np.random.default_rng(2).random((n, k), dtype=np.float32))

    def bare_fisher():
        x @ proj
        y2 @ a
        g.T @ y2

    t_enc = _best_of(lambda: fisher.encode_many(take))
    t_gemm = _best_of(bare_fisher)
    rows.append({"what": f"Fisher k={k} (PCA{d}) encoding", "descriptors": n,
                 "descriptors_per_s": round(n / t_enc), "bound_descriptors_per_s": round(n / t_gemm),
                 "fraction_of_bound": round(t_gemm / t_enc, 3)})
    for r in rows:
        print(f"  {r['what']:32s}: {r['descriptors_per_s']:>10,} desc/s  (bare GEMM bound "
              f"{r['bound_descriptors_per_s']:>10,}; {100 * r['fraction_of_bound']:.0f}%)", flush=True)
    return rows


def kmeans_timing(db: Sequence[LocalFeatures], k: int, n: int, niter: int, seed: int,
                  faiss_threads: Optional[int]) -> List[dict]:
    """Seconds for a k-word codebook on n descriptors, and the cost of one faiss iteration with faiss'
    default GEMM blocks against the blocks :func:`train_codebook` uses (same run)."""
    import faiss

    x = sample_descriptors(db, n, seed=seed)
    rows = []
    one = x[: min(len(x), 200_000)]
    for label, blocks in (("faiss default blocks", (4096, 1024)), ("blocks spanning all centroids", (4096, k))):
        old = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = blocks
        try:
            km = faiss.Kmeans(x.shape[1], k, niter=1, seed=seed, max_points_per_centroid=10 ** 6)
            t0 = time.perf_counter()
            km.train(one)
            sec = time.perf_counter() - t0
        finally:
            faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = old
        rows.append({"what": f"k-means 1 iteration, k={k}, {len(one)} points, {label}", "seconds": round(sec, 2)})
        print(f"  {rows[-1]['what']}: {sec:.1f} s", flush=True)
    t0 = time.perf_counter()
    cb = train_codebook(x, k, seed=seed, niter=niter, max_points_per_centroid=max(1, len(x) // k),
                        n_threads=faiss_threads)
    sec = time.perf_counter() - t0
    rows.append({"what": f"codebook k={k} on {len(x)} descriptors, {niter} iterations", "seconds": round(sec, 1),
                 "objective": cb.config["objective"]})
    print(f"  {rows[-1]['what']}: {sec:.1f} s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="data folder (default: retrieval.paths.data_root())")
    p.add_argument("--out", default=f"results/{NAME}")
    p.add_argument("--cache", default="cache")
    p.add_argument("--quick", action="store_true", help="small subsets and vocabularies (a smoke run)")
    p.add_argument("--datasets", default="oxford,coil100")
    p.add_argument("--jobs", type=int, default=2, help="feature extraction workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bow-k", default=None, help="BoW vocabulary sizes (default 1000,20000; quick 100,1000)")
    p.add_argument("--bow-soft", action="store_true",
                   help="also soft-assigned BoW (3 nearest words) for vocabularies >= 10k (quick: >= 1k)")
    p.add_argument("--vlad-k", default="64,256")
    p.add_argument("--fisher-k", default="64,256")
    p.add_argument("--whiten-dims", default="1024", help="PCA-whitening output sizes for VLAD ('' = none)")
    p.add_argument("--whiten-power", type=float, default=0.5, help="eigenvalue power (0.5 = full whitening)")
    p.add_argument("--whiten-shrinkage", type=float, default=0.0)
    p.add_argument("--faiss-threads", type=int, default=None,
                   help="faiss OpenMP threads for k-means (1 is faster on a machine busy with other work)")
    p.add_argument("--no-speed", action="store_true", help="skip the extraction/encoding speed measurements")
    p.add_argument("--kmeans-timing", action="store_true",
                   help="also time a 20k-word codebook on 1M descriptors (minutes)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    data = Path(args.data) if args.data else data_root()
    cache = Path(args.cache) / NAME
    bow_k = [int(v) for v in (("100,1000" if args.quick else "1000,20000") if args.bow_k is None else args.bow_k).split(",") if v]
    vlad_k = [int(v) for v in args.vlad_k.split(",") if v]
    fisher_k = [int(v) for v in args.fisher_k.split(",") if v]
    args.whiten_dims = [int(v) for v in args.whiten_dims.split(",") if v]
    if args.quick:
        args.whiten_dims = [min(d, 64) for d in args.whiten_dims]
    names = [n for n in args.datasets.split(",") if n]
    unknown = set(names) - set(SIFT_FOR)
    if unknown:
        raise SystemExit(f"unknown datasets {sorted(unknown)}; known: {sorted(SIFT_FOR)}")

    datasets = load_datasets(data, args.quick)
    # first search loads the index backend (torch): done once here so no method's query time pays it
    Index(np.eye(4, dtype=np.float32)).search(np.eye(4, dtype=np.float32), k=1)
    feats = {}
    stage = {}
    # whitening of each dataset is learned on the other one, so both sets of features are needed
    for name in SIFT_FOR:
        ds = datasets[name]
        print(ds.summary(), flush=True)
        t0 = time.perf_counter()
        feats[name] = local_features(name, ds, cache, args.jobs, not args.no_progress)
        stage[f"features {name}"] = round(time.perf_counter() - t0, 1)
        info = feats[name][2]
        print(f"  {name}: {info['keypoints_per_db_image']:.0f} keypoints / database image, "
              f"{info['keypoints_per_query']:.0f} / query, {info['extract_s_per_image'] * 1000:.1f} ms / image",
              flush=True)

    rows: List[dict] = []
    for name in names:
        t0 = time.perf_counter()
        r = dataset_rows(name, datasets[name], feats, args, cache, bow_k, vlad_k, fisher_k)
        rows.extend(r)
        stage[f"methods {name}"] = round(time.perf_counter() - t0, 1)

    speed: List[dict] = []
    if not args.no_speed:
        print("speed:", flush=True)
        speed += extraction_speed(datasets["oxford"], 16 if args.quick else 80)
        tag = f"oxford{'-quick' if args.quick else ''}-{SIFT_FOR['oxford']}"
        odb = feats["oxford"][0]
        vk = max(vlad_k) if vlad_k else 64
        cb = cached_codebook(cache, tag, odb, vk, "oxford database images", args.quick, args.seed, args.faiss_threads)
        fk = max(fisher_k) if fisher_k else 64
        fisher = cached_fisher(cache, tag, odb, fk, "oxford database images", args.quick, args.seed)
        speed += encoding_speed(odb, VladEncoder(cb), fisher, 20_000 if args.quick else 200_000)
    if args.kmeans_timing:
        print("k-means timing:", flush=True)
        k = 2000 if args.quick else 20000
        speed += kmeans_timing(feats["oxford"][0], k, 100_000 if args.quick else 1_000_000, 10,
                               args.seed, args.faiss_threads)

    columns = ["method", "dataset", "mAP", "dim", "extract_s_per_image", "encode_db_s", "query_s",
               "codebook_trained_on"]
    extra = {"speed": speed, "stage_seconds": stage, "total_seconds": round(time.perf_counter() - t_start, 1),
             "peak_rss_mb": round(peak_rss_mb(), 1), "quick": args.quick,
             "sift": {n: feats[n][2]["sift"] for n in feats},
             "protocol": {"oxford": "oxford_map (good+ok, junk ignored, cropped queries)",
                          "coil100": "map@100 (GLDv2), every 4th image a query against all others"}}
    table = write_results(rows, args.out, columns,
                          title="Classical retrieval: RootSIFT + BoW / VLAD / Fisher (mAP in %)", extra=extra)
    speed_md = ""
    if speed:
        from retrieval.report import markdown_table
        speed_md = "\n\n### Speed\n\n" + markdown_table(speed)
        with open(Path(args.out) / "results.md", "a") as f:
            f.write(speed_md + "\n")
    print()
    print(table + speed_md)
    print(f"\ntotal {extra['total_seconds']:.0f} s; stages {stage}; peak RSS {extra['peak_rss_mb']:.0f} MiB")
    return {"rows": rows, **extra}


if __name__ == "__main__":
    main()
