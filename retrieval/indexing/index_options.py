"""Backend options of :class:`retrieval.indexing.index.Index`, one :class:`retrieval.core.config.Config` per backend.

Every option is checked here, before faiss sees it: faiss itself aborts (``hnsw_m=0``), crashes
(``hnsw_m=1``, ``nbits=0``), hangs (``hnsw_m=-1``) or divides by zero (``m=0``) on values it does not
expect, and a negative ``memory_mb`` used to be stored in the index file and fail every later search.
A bad value is a :class:`retrieval.core.config.ConfigError` (a ValueError) naming the option and the
allowed range.

``resolve_options(backend, options)`` turns the keyword options of ``Index(..., **options)`` (or
``--option KEY=VALUE`` on the command line, or the ``backend_options`` of a saved file) into the
backend's checked configuration; aliases (``efSearch``, ``efConstruction``, ``M``) are accepted.
``search_options(conf, overrides)`` applies per-call search options (``memory_mb``, ``precision``,
``nprobe``, ``ef_search``) and refuses the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Type

from retrieval.core.config import Config, ConfigError

__all__ = ["ExactOptions", "FlatOptions", "IVFOptions", "IVFPQOptions", "HNSWOptions", "OPTION_CONFIGS",
           "SEARCH_OPTIONS", "resolve_options", "search_options", "DEFAULT_MEMORY_MB"]

DEFAULT_MEMORY_MB = 256.0
PRECISIONS = ("auto", "float32", "bfloat16")
# faiss' PQ codes hold at most 16 bits per sub-quantiser in practice (2^16 centroids each)
MAX_PQ_BITS = 16
# links per HNSW node: faiss needs at least 2; more than 512 only costs memory
MAX_HNSW_M = 512
_MAX_SEED = 2 ** 31 - 1


def _at_least(name: str, value: Optional[int], low: int, high: Optional[int] = None) -> None:
    if value is None:
        return
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"option {name}={value} is out of range: must be {span}")


@dataclass(frozen=True)
class ExactOptions(Config):
    """Brute force: ``memory_mb`` bounds the score block held at once; ``precision`` of the product
    that finds the top k (:mod:`retrieval.indexing.exact_bf16`): ``"float32"`` throughout, ``"bfloat16"`` a
    bfloat16 pre-selection re-scored in float32 (the same top k, where the CPU has native bfloat16),
    ``"auto"`` (default) bfloat16 where available and the search is large enough to gain. Both are
    search options."""

    memory_mb: float = DEFAULT_MEMORY_MB
    precision: str = "auto"

    def check(self) -> None:
        if not (math.isfinite(self.memory_mb) and self.memory_mb > 0):
            raise ConfigError(f"option memory_mb={self.memory_mb} must be a positive number of megabytes")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"option precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class FlatOptions(Config):
    """faiss-flat has no options."""


@dataclass(frozen=True)
class IVFOptions(Config):
    """Inverted file: ``nlist`` lists (None: chosen from the data), ``nprobe`` lists searched (search
    option; clamped to ``nlist``), ``seed`` of the k-means training."""

    nlist: Optional[int] = None
    nprobe: int = 16
    seed: int = 0

    def check(self) -> None:
        _at_least("nlist", self.nlist, 1)
        _at_least("nprobe", self.nprobe, 1)
        _at_least("seed", self.seed, 0, _MAX_SEED)


@dataclass(frozen=True)
class IVFPQOptions(IVFOptions):
    """IVF with product quantisation: ``m`` sub-quantisers (must divide the dimension; None: chosen
    from it), ``nbits`` bits per code."""

    m: Optional[int] = None
    nbits: int = 8

    def check(self) -> None:
        super().check()
        _at_least("m", self.m, 1)
        _at_least("nbits", self.nbits, 1, MAX_PQ_BITS)


@dataclass(frozen=True)
class HNSWOptions(Config):
    """HNSW graph: ``hnsw_m`` links per node, ``ef_construction``, ``ef_search`` (search option)."""

    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def check(self) -> None:
        _at_least("hnsw_m", self.hnsw_m, 2, MAX_HNSW_M)
        _at_least("ef_construction", self.ef_construction, 1)
        _at_least("ef_search", self.ef_search, 1)


OPTION_CONFIGS: Dict[str, Type[Config]] = {
    "exact": ExactOptions, "faiss-flat": FlatOptions, "faiss-ivf": IVFOptions,
    "faiss-ivfpq": IVFPQOptions, "faiss-hnsw": HNSWOptions,
}
ALIASES = {"efSearch": "ef_search", "efConstruction": "ef_construction", "M": "hnsw_m"}
# options that only affect search, so they may be changed per call / after loading
SEARCH_OPTIONS = frozenset({"memory_mb", "precision", "nprobe", "ef_search"})


def _plain(value: Any) -> Any:
    # numpy scalars (np.int64(8), np.float32(0.5)) count as the Python numbers they hold
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value


def _canonical(backend: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    cls = OPTION_CONFIGS[backend]
    names = sorted(cls.__dataclass_fields__)
    out: Dict[str, Any] = {}
    for key, value in options.items():
        key = ALIASES.get(key, key)
        if key not in names:
            raise ConfigError(f"backend {backend!r} has no option {key!r}; its options are {names or 'none'}")
        out[key] = _plain(value)
    return out


def resolve_options(backend: str, options: Mapping[str, Any]) -> Config:
    """The checked options configuration of ``backend`` (unknown names, wrong types and values out
    of range are :class:`ConfigError`)."""
    cls = OPTION_CONFIGS[backend]
    return cls.from_dict(_canonical(backend, options), where=f"backend {backend!r} options")


def search_options(backend: str, conf: Config, overrides: Mapping[str, Any]) -> Config:
    """``conf`` with the per-call search options ``overrides`` applied (and checked); any other
    option is refused."""
    if not overrides:
        return conf
    canonical = {ALIASES.get(k, k): v for k, v in overrides.items()}
    allowed = sorted(SEARCH_OPTIONS & set(type(conf).__dataclass_fields__))
    for key in canonical:
        if key not in allowed:
            raise ConfigError(f"{key!r} is not a search option of backend {backend!r}; search options: "
                              f"{allowed or 'none'}")
    return resolve_options(backend, {**conf.to_dict(), **canonical})
