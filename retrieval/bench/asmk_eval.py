"""ASMK* as a first-stage search on a landmark set: local features of every database image and query
(``--features``, any local configuration), a ``--words`` codebook learned on the database (as the
ladder learns VLAD's there: no training split in the Oxford subset), the inverted file of
:class:`retrieval.features.encoders.asmk.AsmkIndex`, every database image ranked, then the official and the
landmark-level Oxford protocols.

    .venv/bin/python benchmarks/asmk_eval.py --data ../shared/data/oxford5k_subset --features rootsift-upright-c02-4k
"""
from __future__ import annotations

import time
from pathlib import Path


__all__ = ["main", "parser"]


def run(args) -> Path:
    """The measurement of ``retrieval bench asmk-eval`` (its options: ``args``); returns the results folder."""
    from retrieval.datasets.open import DatasetConfig, open_dataset
    from retrieval.evaluation.evaluate import evaluate
    from retrieval.features.encoders.asmk import AsmkEncoder, AsmkIndex
    from retrieval.features.extract import extract_local_features
    from retrieval.features.local_extractors import local_extractor
    from retrieval.features.store import LocalFeatureStore
    from retrieval.core.paths import data_root
    from retrieval.core.report import write_results

    path = args.data if args.data is not None else str(data_root() / "oxford5k_subset")
    ds = open_dataset(DatasetConfig(kind="oxford", path=path))
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    ex = local_extractor(args.features)
    db_ids, q_ids = [str(i) for i in ds.db_ids], [str(q) for q in ds.query_ids]
    t0 = time.perf_counter()
    extract_local_features(db_ids, ds.db_paths, ex, cache / f"{args.features}_db.h5", n_jobs=2, desc="database")
    extract_local_features(q_ids, ds.query_paths, ex, cache / f"{args.features}_q.h5", n_jobs=2,
                           boxes=list(ds.query_boxes or [None] * len(q_ids)), desc="queries")
    with LocalFeatureStore(cache / f"{args.features}_db.h5") as s:
        db = [s.get(i) for i in db_ids]
    with LocalFeatureStore(cache / f"{args.features}_q.h5") as s:
        queries = [s.get(i) for i in q_ids]
    t1 = time.perf_counter()
    enc_path = cache / f"asmk_{args.features}_{args.words}.npz"
    if enc_path.is_file():
        encoder = AsmkEncoder.load(enc_path)
    else:
        encoder = AsmkEncoder(k=args.words).fit(db, n_sample=args.sample, trained_on="database", n_threads=1)
        encoder.save(enc_path)
    encoder.query_assignment = args.query_assignment
    t2 = time.perf_counter()
    index = AsmkIndex(encoder, db_ids, db)
    t3 = time.perf_counter()
    ranked, _ = index.search(queries, k=len(db_ids))
    t4 = time.perf_counter()
    predictions = dict(zip(q_ids, ranked))
    rows = []
    for protocol in ("oxford", "landmark"):
        metrics = evaluate(ds, predictions, protocol=protocol, k=len(db_ids))
        rows.append({"method": f"ASMK* {args.words} ({args.features})", "protocol": protocol,
                     "mAP": round(100 * metrics[f"{protocol}_map"], 2), "queries": metrics["num_queries"]})
        print(f"  {protocol}: mAP {rows[-1]['mAP']}", flush=True)
    extra = {"seconds": {"features": round(t1 - t0, 1), "codebook": round(t2 - t1, 1), "index": round(t3 - t2, 1),
                         "search_per_query": round((t4 - t3) / len(q_ids), 3)},
             "query_assignment": args.query_assignment, "codebook_trained_on": "database images"}
    print(write_results(rows, out, ["method", "protocol", "mAP", "queries"], extra=extra,
                        title="ASMK* first-stage search"))
    return out
