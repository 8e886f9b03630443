"""``retrieval search``: an index x a query feature file -> a ranking file, best first.

Which file. ``format`` auto (the default) writes the compact binary ranking
(:mod:`retrieval.indexing.ranking_file`: int32 rows, float32 scores, one id table) unless the output
path ends in ``.json``; ``json`` / ``binary`` force one. The binary file is written a batch of queries
at a time, so memory does not grow with queries x k; JSON (for small rankings a person reads) is built
in memory.

How many results per query. A protocol that scores the full ranking (Oxford / Paris mAP, the
landmark-level mAP, mean AP and NMRR on labelled folders) counts a positive that is not ranked as
missed, so a ranking cut at 100 scores lower than the descriptor is. The default ``k`` (None) is
therefore the whole database whenever the ranking stays small (at most :data:`FULL_RANKING_ENTRIES`
query x database entries), else :data:`LARGE_DEFAULT_K` results (what GLDv2's map@100 needs), with a
note on stderr; ``retrieval evaluate`` refuses a ranking too short for its protocol.

Which queries. A query file made with another network, weights, pooling, whitening or encoder than
the index holds vectors that cannot be compared with the index's: refused unless ``--allow-mixed``
(another query image size of the same extractor is a legitimate choice: a warning). A query row with
NaN values is refused naming the query; an all-zero one (no keypoints) is searched, scoring 0.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from retrieval.core.config import Config, ConfigError

__all__ = ["SearchConfig", "main", "default_k"]

#: the default k ranks the whole database while queries x database stays below this
FULL_RANKING_ENTRIES = 20_000_000
#: the default k beyond that size (at least what map@100 needs)
LARGE_DEFAULT_K = 1000
#: query x result entries per search call at most (``batch`` is lowered for long rankings): the
#: batch's ids, scores and rows stay within about 100 MB
BATCH_ENTRIES = 1_000_000


@dataclass(frozen=True)
class SearchConfig(Config):
    """``k``: results per query (None: the whole database for small sets, see the module docstring);
    ``batch``: queries per search call; ``options``: memory_mb (exact), nprobe (IVF), ef_search (HNSW);
    ``allow_mixed``: search queries described otherwise than the index (another network, weights,
    pooling, whitening or encoder: incomparable vectors) with a warning instead of refusing them;
    ``where``: metadata conditions (``label=cat``, ``date>=2024-01-01``) a result must meet, applied inside
    the search (an index that is a collection folder: :mod:`retrieval.indexing.metadata`);
    ``format``: auto (binary unless the output ends in .json), binary or json."""

    k: Optional[int] = None
    batch: int = 4096
    options: Dict[str, Any] = field(default_factory=dict)
    allow_mixed: bool = False
    where: Tuple[str, ...] = ()
    format: str = "auto"

    def check(self) -> None:
        if self.format not in ("auto", "binary", "json"):
            raise ConfigError(f"format must be auto, binary or json, got {self.format!r}")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"k must be positive (or omitted for the full ranking), got {self.k}")
        if self.batch < 1:
            raise ConfigError(f"batch must be positive, got {self.batch}")


def default_k(num_queries: int, num_db: int) -> int:
    """The k of ``SearchConfig(k=None)`` (module docstring)."""
    if num_queries * num_db <= FULL_RANKING_ENTRIES:
        return num_db
    return min(num_db, LARGE_DEFAULT_K)


def main(conf: SearchConfig, index: Path, queries: Path, out: Path, progress: bool = True,
         info: Optional[dict] = None) -> Path:
    """Rank the index ``index`` for every query of the feature file ``queries``; writes the ranking to
    ``out`` (binary or JSON, module docstring) and returns ``out``."""
    import numpy as np
    from tqdm.auto import tqdm

    from retrieval.features.store import config_json, load_global

    from retrieval.indexing.index import Index, Ranking
    from retrieval.indexing.ranking import ranking_format
    from retrieval.indexing.ranking_file import RankingWriter
    from retrieval.core.vectors import check_file_rows

    from retrieval.indexing.collection import open_index

    try:
        idx, allowed = open_index(index, conf.where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    query_ids, vectors, query_config = load_global(queries)
    if len(query_ids) == 0:
        raise ConfigError(f"{queries}: feature file holds no query vectors")
    if vectors.shape[1] != idx.dim:
        raise ConfigError(f"{queries}: query vectors have dimension {vectors.shape[1]}, the index {index} "
                          f"has dimension {idx.dim}")
    zero = check_file_rows(queries, query_ids, vectors, what="query")
    if zero.size:  # a query image without keypoints: it scores 0 against everything
        idx.zero_rows = "keep"
        print(f"retrieval: warning: {queries}: {zero.size} query vector(s) are all zero (no keypoints?), first "
              f"{query_ids[zero[0]]!r}: their ranking is arbitrary (every score 0)", file=sys.stderr)
    if idx.config and query_config and config_json(idx.config) != config_json(query_config):
        differ = incomparable(idx.config, query_config)
        if differ and not conf.allow_mixed:
            raise ConfigError(f"{queries}: made with another {', '.join(differ)} than the index {index} "
                              f"({_values(query_config, differ)} vs {_values(idx.config, differ)}): the vectors "
                              "are not comparable; extract the queries as the database was, or pass "
                              "--allow-mixed to search anyway")
        print(f"retrieval: warning: {queries} was made with another configuration than the index {index} "
              f"({config_json(query_config)} vs {config_json(idx.config)})", file=sys.stderr)
    try:
        idx.search(vectors[:1], k=1, **conf.options)  # options checked before the long run
    except ValueError as exc:
        raise ConfigError(f"{index}: {exc}") from None
    k = conf.k if conf.k is not None else default_k(len(query_ids), len(idx))
    if conf.k is None and k < len(idx):
        print(f"retrieval: note: ranking the top {k} of {len(idx)} database images per query (a full "
              f"ranking of {len(query_ids)} queries would be too large); protocols that score the full "
              f"ranking need --k {len(idx)}", file=sys.stderr)
    k = min(k, len(idx))
    start = time.perf_counter()
    binary = ranking_format(out, conf.format) == "binary"
    # the binary file is written batch by batch: bound a batch's results; JSON holds them all anyway
    batch = min(conf.batch, max(1, BATCH_ENTRIES // max(k, 1))) if binary else conf.batch
    steps = range(0, len(query_ids), batch)
    batches = (idx.search(vectors[lo:lo + batch], k=k, query_ids=query_ids[lo:lo + batch], allowed=allowed,
                           **conf.options)
               for lo in tqdm(steps, desc="search", unit="batch", disable=not progress or len(steps) < 2,
                              leave=False))
    if not binary:
        if len(query_ids) * k > FULL_RANKING_ENTRIES:  # JSON: ~48 bytes a result on disk, ~10x that in memory
            print(f"retrieval: warning: {out}: a JSON ranking of {len(query_ids) * k:,} results (about "
                  f"{len(query_ids) * k * 48 / 1e9:.1f} GB) is built in memory; a name not ending in .json writes "
                  "the binary file (8 bytes a result, written as it goes)", file=sys.stderr)
        parts = list(batches)
        ranking = parts[0] if len(parts) == 1 else Ranking(
            ids=np.concatenate([p.ids for p in parts]), scores=np.concatenate([p.scores for p in parts]),
            indices=np.concatenate([p.indices for p in parts]), query_ids=list(query_ids))
        ranking.save(out, format="json")
    else:
        with RankingWriter(out, list(query_ids), idx.ids, k) as writer:
            for part in batches:
                writer.write(part.indices, part.scores)
    if info is not None:
        info.update(queries=len(query_ids), k=k, database=len(idx),
                    seconds=round(time.perf_counter() - start, 3))
    return Path(out)


#: extractor settings a query file may legitimately change (the query image size of the same network;
#: the arithmetic precision of the same network and weights: int8 or bfloat16 descriptors approximate the
#: float32 ones, cosine >= 0.99 by the probe of retrieval.features.precision, so a float32 query against
#: an int8 database ranks as the E1 bound allows)
QUERY_SIDE_KEYS = frozenset({"size", "name", "input", "upscale", "scales", "max_side", "max_keypoints",
                             "precision", "calibration", "calibration_sha256"})


def _flat(config: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    out: Dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def incomparable(index_config: dict, query_config: dict) -> list:
    """The settings (dotted keys) in which two feature configurations differ so that their vectors
    cannot be compared: anything but :data:`QUERY_SIDE_KEYS` (network, weights, pooling, whitening,
    encoder and its codebook ...)."""
    a, b = _flat(index_config), _flat(query_config)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.rsplit(".", 1)[-1] not in QUERY_SIDE_KEYS)


def _values(config: dict, keys: list) -> str:
    flat = _flat(config)
    return ", ".join(f"{k}={flat.get(k)!r}" for k in keys[:4])
