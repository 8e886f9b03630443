"""Re-ranking of a global shortlist with local evidence, fusion of the two, and query expansion.

* :mod:`retrieval.rerank.matching`  batched descriptor matching (one GEMM per pair, ratio / mutual tests)
* :mod:`retrieval.rerank.ratio`     ratio-test score (E5)
* :mod:`retrieval.rerank.spatial`   spatial verification (RANSAC / USAC inliers)
* :mod:`retrieval.rerank.vlad`      VLAD similarity score (E6)
* :mod:`retrieval.rerank.patch`     EfficientNet patch-token similarity (E7; imported on first use)
* :mod:`retrieval.rerank.shortlist` the cached shortlist (global + local scores, npz + JSON)
* :mod:`retrieval.rerank.fusion`    the one fusion configuration: ``v * global + (1 - v) * N(local)``, the DELG rule
* :mod:`retrieval.rerank.expansion` average / alpha query expansion, database-side augmentation
"""
from retrieval.rerank.scorer import LocalScorer
from retrieval.rerank.expansion import alpha_query_expansion, average_query_expansion, database_side_augmentation
from retrieval.rerank.fusion import (DEFAULT_FUSION, NO_RERANKING, NORMALISATIONS, FusionConfig, FusionSettings, delg_order, fuse,
                     fused_order, fusion_order, normalise_scores, rerank)
from retrieval.rerank.matching import PairMatches, ShortlistMatches, match_pair, match_shortlist
from retrieval.rerank.ratio import RatioTestScorer, ratio_scores
from retrieval.rerank.shortlist import Shortlist
from retrieval.rerank.spatial import METHODS, MODELS, SPATIAL_CONFIGS, SpatialConfig, SpatialVerifier, Verification
from retrieval.rerank.vlad import VladSimilarityScorer

__all__ = [
    "LocalScorer", "PairMatches", "ShortlistMatches", "match_shortlist", "match_pair",
    "RatioTestScorer", "ratio_scores", "SpatialConfig", "SpatialVerifier", "Verification", "MODELS",
    "METHODS", "SPATIAL_CONFIGS", "VladSimilarityScorer", "Shortlist", "NORMALISATIONS",
    "normalise_scores", "fuse", "fusion_order", "delg_order", "fused_order", "rerank", "FusionConfig",
    "FusionSettings", "NO_RERANKING", "DEFAULT_FUSION",
    "average_query_expansion", "alpha_query_expansion", "database_side_augmentation",
    "PatchScorer", "PATCH_METHODS",
]


def __getattr__(name):
    # the patch scorer builds on features.efficientnet: imported only when asked for
    if name in ("PatchScorer", "PATCH_METHODS"):
        from retrieval.rerank import patch

        return getattr(patch, name)
    raise AttributeError(f"module 'retrieval.rerank' has no attribute {name!r}")
