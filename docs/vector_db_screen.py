"""The screen that picked the vector database (README, "Vector database backends"): one candidate at a time,
each installed in its own throw-away virtual environment (the project's packages shared through a .pth
file), on N x 256 seeded clustered unit vectors (1,000 centres), 100 queries, top 100:

    python3 -m venv /tmp/try-lance && /tmp/try-lance/bin/pip install lancedb==0.40.0
    /tmp/try-lance/bin/python docs/vector_db_screen.py lance 20000
    # qdrant: qdrant-client==1.20.0 (local mode, path=...); milvus: pymilvus==3.0.2 milvus-lite==3.2.2

Prints one JSON line: insert and index seconds, single-query queries/s and recall@100, the same for a
filter passing 10 % of the rows (inside the search), peak RSS, on-disk size. Not part of the package
(it imports the candidates that were not chosen)."""
import sys, time, json, shutil, resource, os
import numpy as np
which = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
d, nq, k = 256, 100, 100
rng = np.random.default_rng(0)
cent = rng.standard_normal((1000, d), dtype=np.float32); cent /= np.linalg.norm(cent, axis=1, keepdims=True)
def draw(m):
    x = rng.standard_normal((m, d), dtype=np.float32) * (0.5 / np.sqrt(d)) + cent[rng.integers(0, 1000, m)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)
X, Q = draw(n), draw(nq)
bucket = rng.integers(0, 100, n).astype(np.int32)
S = Q @ X.T
ref = np.argsort(-S, axis=1)[:, :k]
Sf = np.where(bucket[None, :] < 10, S, -np.inf); reff = np.argsort(-Sf, axis=1)[:, :k]
def recall(rows, r): return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(rows, r)]))
path = f"/tmp/vdbtry/db-{which}"; shutil.rmtree(path, ignore_errors=True)
out = {"db": which, "n": n}
t = time.perf_counter()
if which == "lance":
    import lancedb, pyarrow as pa
    db = lancedb.connect(path)
    tbl = db.create_table("v", pa.table({"row": np.arange(n), "bucket": bucket,
          "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), d)}))
    out["insert_s"] = time.perf_counter() - t; t = time.perf_counter()
    tbl.create_index(metric="dot", index_type="IVF_HNSW_SQ", num_partitions=max(1, n // 100_000 * 4))
    tbl.create_scalar_index("bucket")
    out["index_s"] = time.perf_counter() - t
    def search(q, where=None, ef=200):
        b = tbl.search(q).distance_type("dot").limit(k).ef(ef).select(["row"])
        if where: b = b.where(where, prefilter=True)
        return b.to_arrow()["row"].to_numpy()
elif which == "qdrant":
    from qdrant_client import QdrantClient, models
    cl = QdrantClient(path=path)
    cl.create_collection("v", vectors_config=models.VectorParams(size=d, distance=models.Distance.DOT))
    cl.upload_collection("v", vectors=X, payload=({"bucket": int(b)} for b in bucket), ids=range(n), batch_size=1000)
    out["insert_s"] = time.perf_counter() - t; out["index_s"] = 0.0
    def search(q, where=None, ef=None):
        f = models.Filter(must=[models.FieldCondition(key="bucket", range=models.Range(lt=10))]) if where else None
        r = cl.query_points("v", query=q.tolist(), limit=k, query_filter=f).points
        return np.array([p.id for p in r])
else:
    from milvus_lite import MilvusLite, CollectionSchema, DataType, FieldSchema
    mdb = MilvusLite(path)
    schema = CollectionSchema(fields=[FieldSchema(name="row", dtype=DataType.INT64, is_primary=True),
        FieldSchema(name="bucket", dtype=DataType.INT32), FieldSchema(name="vec", dtype=DataType.FLOAT_VECTOR, dim=d)])
    col = mdb.create_collection("v", schema)
    for lo in range(0, n, 10000):
        col.insert([{"row": int(i), "bucket": int(bucket[i]), "vec": X[i].tolist()} for i in range(lo, min(n, lo + 10000))])
    col.flush()
    out["insert_s"] = time.perf_counter() - t; t = time.perf_counter()
    col.create_index("vec", {"index_type": "HNSW", "metric_type": "IP", "params": {"M": 32, "efConstruction": 80}})
    col.load()
    out["index_s"] = time.perf_counter() - t
    def search(q, where=None, ef=200):
        r = col.search([q], top_k=k, metric_type="IP", expr=where, search_params={"ef": ef})[0]
        return np.array([h["id"] for h in r])
t = time.perf_counter(); rows = [search(q) for q in Q]; dt = time.perf_counter() - t
out["qps"] = nq / dt; out["recall"] = recall(rows, ref)
wh = "bucket < 10"
t = time.perf_counter(); rows = [search(q, wh) for q in Q]; dt = time.perf_counter() - t
out["qps_filter10"] = nq / dt; out["recall_filter10"] = recall(rows, reff)
out["all_k_filter10"] = all(len(r) == k for r in rows) and all(bucket[np.asarray(r)].max() < 10 for r in rows)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["disk_mb"] = sum(os.path.getsize(os.path.join(a, f)) for a, _, fs in os.walk(path) for f in fs) / 2**20
print(json.dumps({k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in out.items()}), flush=True)
