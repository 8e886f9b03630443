"""ASMK* as a first-stage search on a landmark set: local features of every database image and query
(``--features``, any local configuration), a ``--words`` codebook learned on the database descriptors (as
the ladder learns VLAD's there: the Oxford subset has no training split; the ASMK paper learns Oxford's on
Paris), the inverted file of :class:`retrieval.features.encoders.asmk.AsmkIndex`, every database image
ranked, then the official and the landmark-level Oxford protocols and, when the revisited ground truth is
there (``--gnd``, default ``<data root>/revisitop/gnd_roxford5k.pkl``), revisited Easy / Medium / Hard on
the subset (the official pickle restricted to the images present, no distractors:
:mod:`retrieval.datasets.revisited_subset`; its 15 queries beyond Oxford's 55 are added). Each protocol is
reported on the ladder's two query folds (whole landmarks per fold, :func:`retrieval.steps.choose.query_groups`)
and on all queries, so that a setting compared across runs can be chosen on one fold and read on the other.

    .venv/bin/python benchmarks/asmk_eval.py --data ../shared/data/oxford5k_subset --features rootsift-upright-c02-4k
"""
from __future__ import annotations

import time
from pathlib import Path


__all__ = ["run"]


def _relevances(ds, gnd):
    """(label, Relevance) of every protocol the bench reports."""
    from retrieval.datasets.revisited_subset import revisited_view
    from retrieval.steps.choose import Relevance, relevances

    out = [(p, r) for p, r in zip(("official", "landmark"), relevances(ds, ["oxford", "landmark"]))]
    if gnd is not None:
        for level in ("easy", "medium", "hard"):
            out.append((f"revisited {level}", Relevance(f"revisited {level}", revisited_view(ds, gnd, level),
                                                        "oxford", "oxford_map")))
    return out


def run(args) -> Path:
    """The measurement of ``retrieval bench asmk-eval`` (its options: ``args``); returns the results folder."""
    from retrieval.core.paths import data_root
    from retrieval.core.report import write_results
    from retrieval.datasets.open import DatasetConfig, open_dataset
    from retrieval.datasets.revisited_subset import RESTRICTED_NOTE, with_revisited_queries
    from retrieval.datasets.revisitop import read_gnd
    from retrieval.features.encoders.asmk import AsmkEncoder, AsmkIndex
    from retrieval.features.extract import extract_local_features
    from retrieval.features.local_extractors import local_extractor
    from retrieval.features.store import LocalFeatureStore
    from retrieval.steps.choose import query_groups

    path = args.data if args.data is not None else str(data_root() / "oxford5k_subset")
    ds = open_dataset(DatasetConfig(kind="oxford", path=path))
    gnd_path = Path(args.gnd) if args.gnd else data_root() / "revisitop" / "gnd_roxford5k.pkl"
    gnd = None
    if args.gnd or gnd_path.is_file():
        gnd = read_gnd(gnd_path)
        ds = with_revisited_queries(ds, gnd)
    groups = query_groups(ds, 2)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    ex = local_extractor(args.features)
    db_ids, q_ids = [str(i) for i in ds.db_ids], [str(q) for q in ds.query_ids]
    # a shared store (the ladder's) holds both sides: Oxford's query ids differ from its image ids
    db_store, q_store = ((Path(args.store),) * 2 if getattr(args, "store", None) else
                         (cache / f"{args.features}_db.h5", cache / f"{args.features}_q.h5"))
    if db_store == q_store and set(db_ids) & set(q_ids):
        raise ValueError(f"{db_store}: query ids that are also image ids ({sorted(set(db_ids) & set(q_ids))[0]}) "
                         "cannot share one store with the database (a query is a cropped image)")
    t0 = time.perf_counter()
    extract_local_features(db_ids, ds.db_paths, ex, db_store, n_jobs=2, desc="database")
    extract_local_features(q_ids, ds.query_paths, ex, q_store, n_jobs=2,
                           boxes=list(ds.query_boxes or [None] * len(q_ids)), desc="queries")
    with LocalFeatureStore(db_store) as s:
        db = [s.get(i) for i in db_ids]
    with LocalFeatureStore(q_store) as s:
        queries = [s.get(i) for i in q_ids]
    t1 = time.perf_counter()
    enc_path = cache / f"asmk_{args.features}_{args.words}_{args.sample}_{args.niter}.npz"
    if enc_path.is_file():
        encoder = AsmkEncoder.load(enc_path)
    else:
        encoder = AsmkEncoder(k=args.words).fit(db, n_sample=args.sample, niter=args.niter, trained_on="database",
                                                n_threads=args.threads)
        encoder.save(enc_path)
    encoder.alpha, encoder.tau = args.alpha, args.tau
    t2 = time.perf_counter()
    index = AsmkIndex(encoder, db_ids, db)
    t3 = time.perf_counter()
    rows, search = [], {}
    relevances = _relevances(ds, gnd)
    for ma in args.query_assignment:
        encoder.query_assignment = ma   # the index holds the database side (one word per descriptor)
        start = time.perf_counter()
        ranked, _ = index.search(queries, k=len(db_ids))
        search[ma] = round((time.perf_counter() - start) / len(q_ids), 3)
        predictions = dict(zip(q_ids, ranked))
        method = f"ASMK* {args.words} ma={ma} alpha={args.alpha:g} tau={args.tau:g} ({args.features})"
        for protocol, relevance in relevances:
            per_query = relevance.per_query(predictions)
            row = {"method": method, "protocol": protocol}
            for fold in sorted(set(groups[q] for q in per_query)):
                values = [v for q, v in per_query.items() if groups[q] == fold]
                row[str(fold)] = round(100 * sum(values) / len(values), 2)
            row["mAP"] = round(100 * sum(per_query.values()) / len(per_query), 2)
            row["queries"] = len(per_query)
            rows.append(row)
            print(f"  ma={ma} {protocol}: mAP {row['mAP']}", flush=True)
    folds = [c for c in rows[0] if c not in ("method", "protocol", "mAP", "queries")]
    extra = {"seconds": {"features": round(t1 - t0, 1), "codebook": round(t2 - t1, 1), "index": round(t3 - t2, 1),
                         "search_per_query": search},
             "encoder": {k: v for k, v in encoder.config.items() if k not in ("codebook", "query_assignment")},
             "codebook": {"trained_on": "database images' descriptors", "sample": args.sample, "niter": args.niter},
             "revisited": None if gnd is None else f"{gnd_path}: {RESTRICTED_NOTE}",
             "folds": "the ladder's query folds (whole landmarks), retrieval.steps.choose.query_groups"}
    print(write_results(rows, out, ["method", "protocol", *folds, "mAP", "queries"], extra=extra,
                        title="ASMK* first-stage search"))
    return out
