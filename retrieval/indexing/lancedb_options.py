"""Options of the LanceDB backend (:mod:`retrieval.indexing.lancedb_backend`), one checked
:class:`retrieval.core.config.Config`, kept apart from :mod:`retrieval.indexing.index_options` until the
Index wires the backend in.

Build options: ``index_type`` (``"IVF_PQ"``, ``"IVF_HNSW_SQ"``, ``"IVF_FLAT"`` or ``"none"``: a flat
scan of the table, exact), ``num_partitions`` (IVF lists; None: LanceDB's own choice, about sqrt(N)),
``num_sub_vectors`` (IVF_PQ; None: dimension / 16), ``hnsw_m`` and ``ef_construction`` (IVF_HNSW_SQ),
``max_iterations`` of LanceDB's k-means. Search options (may change per call): ``nprobes`` (lists
searched at least; more are searched when a filter leaves fewer than k rows in them), ``refine_factor``
(re-score ``refine_factor * k`` candidates with the full vectors; 0: none), ``ef`` (IVF_HNSW_SQ), and
``exact_below``: a filtered search that lets at most this many rows through scores exactly those rows
(numpy BLAS over the rows read back from the table), which is both exact and faster than any index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from retrieval.core.config import Config, ConfigError

__all__ = ["LanceDBOptions", "LANCEDB_INDEX_TYPES", "LANCEDB_SEARCH_OPTIONS"]

LANCEDB_INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT", "none")
LANCEDB_SEARCH_OPTIONS = frozenset({"nprobes", "refine_factor", "ef", "exact_below"})


def _range(name: str, value: Optional[int], low: int, high: Optional[int] = None) -> None:
    if value is not None and (value < low or (high is not None and value > high)):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"option {name}={value} is out of range: must be {span}")


@dataclass(frozen=True)
class LanceDBOptions(Config):
    """The LanceDB backend's options (see the module docstring)."""

    index_type: str = "IVF_PQ"
    num_partitions: Optional[int] = None
    num_sub_vectors: Optional[int] = None
    hnsw_m: int = 20
    ef_construction: int = 300
    max_iterations: int = 50
    nprobes: int = 20
    refine_factor: int = 4
    ef: int = 128
    exact_below: int = 20_000

    def check(self) -> None:
        if self.index_type not in LANCEDB_INDEX_TYPES:
            raise ConfigError(f"option index_type={self.index_type!r} must be one of "
                              f"{', '.join(LANCEDB_INDEX_TYPES)}")
        _range("num_partitions", self.num_partitions, 1)
        _range("num_sub_vectors", self.num_sub_vectors, 1)
        _range("hnsw_m", self.hnsw_m, 2, 512)
        _range("ef_construction", self.ef_construction, 1)
        _range("max_iterations", self.max_iterations, 1)
        _range("nprobes", self.nprobes, 1)
        _range("refine_factor", self.refine_factor, 0, 1000)
        _range("ef", self.ef, 1)
        _range("exact_below", self.exact_below, 0)

    def with_search(self, **overrides) -> "LanceDBOptions":
        """These options with per-call search options applied (and checked); any other is refused."""
        unknown = sorted(set(overrides) - LANCEDB_SEARCH_OPTIONS)
        if unknown:
            raise ConfigError(f"{unknown[0]!r} is not a search option of the lancedb backend; search options: "
                              f"{sorted(LANCEDB_SEARCH_OPTIONS)}")
        return self.override(**overrides) if overrides else self
