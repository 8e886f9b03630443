"""hybrid-retrieval: instance-level image retrieval with one ranking and evaluation interface.

``from retrieval import Index, Ranking`` is the ranking stage (:mod:`retrieval.indexing.index`); the import
is lazy, so ``import retrieval`` stays light (no torch or faiss until an index is used).
"""
from typing import TYPE_CHECKING

__all__ = ["Index", "Ranking", "__version__"]

# the package's one version number (setup.cfg reads it: version = attr: retrieval.__version__)
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from retrieval.indexing.index import Index, Ranking


def __getattr__(name):
    if name in ("Index", "Ranking"):
        from retrieval.indexing import index
        return getattr(index, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
