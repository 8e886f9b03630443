"""Re-ranking of a global shortlist with local evidence, fusion of the two, and query expansion.

* :mod:`retrieval.rerank.matching`  batched descriptor matching (one GEMM per pair, ratio / mutual tests)
* :mod:`retrieval.rerank.ratio`     ratio-test score (E5)
* :mod:`retrieval.rerank.spatial`   spatial verification (RANSAC / USAC inliers)
* :mod:`retrieval.rerank.vlad`      VLAD similarity score (E6)
* :mod:`retrieval.rerank.patch`     EfficientNet patch-token similarity (E7; imported on first use)
* :mod:`retrieval.rerank.shortlist` the cached shortlist (global + local scores, npz + JSON)
* :mod:`retrieval.rerank.fusion`    score normalisation, ``v * global + (1 - v) * local``, the DELG rule, sweeps
* :mod:`retrieval.rerank.expansion` average / alpha query expansion, database-side augmentation
"""
from .base import LocalScorer
from .expansion import alpha_query_expansion, average_query_expansion, database_side_augmentation
from .fusion import NORMALISATIONS, delg_order, delg_rerank, fuse, fusion_order, normalise_scores, rerank, sweep
from .matching import PairMatches, ShortlistMatches, match_pair, match_shortlist
from .ratio import RatioTestScorer, ratio_scores
from .shortlist import Shortlist
from .spatial import METHODS, MODELS, SPATIAL_CONFIGS, SpatialConfig, SpatialVerifier, Verification
from .vlad import VladSimilarityScorer

__all__ = [
    "LocalScorer", "PairMatches", "ShortlistMatches", "match_shortlist", "match_pair",
    "RatioTestScorer", "ratio_scores", "SpatialConfig", "SpatialVerifier", "Verification", "MODELS",
    "METHODS", "SPATIAL_CONFIGS", "VladSimilarityScorer", "Shortlist", "NORMALISATIONS",
    "normalise_scores", "fuse", "fusion_order", "delg_order", "rerank", "delg_rerank", "sweep",
    "average_query_expansion", "alpha_query_expansion", "database_side_augmentation",
    "PatchScorer", "PATCH_METHODS",
]


def __getattr__(name):
    # the patch scorer builds on features.efficientnet: imported only when asked for
    if name in ("PatchScorer", "PATCH_METHODS"):
        from . import patch

        return getattr(patch, name)
    raise AttributeError(f"module 'retrieval.rerank' has no attribute {name!r}")
