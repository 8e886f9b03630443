"""The ranking stage: exact (float32 / verified bfloat16) and faiss indexes, rankings on disk.

``from retrieval.indexing import Index, Ranking`` (also ``from retrieval import Index, Ranking``)."""
from .index import Index
from .ranking import Ranking

__all__ = ["Index", "Ranking"]
