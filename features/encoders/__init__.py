"""Encoders of local features into one global vector: bag of words (with an inverted file), VLAD and
Fisher vectors, behind one interface (:class:`LocalEncoder`): ``fit``, ``encode``, ``encode_many``,
``dim``, ``config``, ``save`` / ``load`` (``.npz`` + JSON)."""
from __future__ import annotations

import os
from typing import Dict, Type, Union

from retrieval.features.encoders.encoder import LocalEncoder, l2_normalize_rows, signed_power
from retrieval.features.encoders.bow import BowEncoder, BowInvertedIndex
from retrieval.features.encoders.fisher import FisherEncoder
from retrieval.features.encoders.vlad import VladEncoder

ENCODERS: Dict[str, Type[LocalEncoder]] = {"bow": BowEncoder, "vlad": VladEncoder, "fisher": FisherEncoder}

__all__ = ["LocalEncoder", "BowEncoder", "BowInvertedIndex", "VladEncoder", "FisherEncoder", "ENCODERS",
           "load_encoder", "l2_normalize_rows", "signed_power"]


def load_encoder(path: Union[str, os.PathLike]) -> LocalEncoder:
    """Load any encoder saved with ``save``; the file says which kind it is."""
    from retrieval.features.npzio import read_model_header
    from retrieval.features.store import FeatureFileError

    kind = read_model_header(path, "encoder").get("kind")
    if kind not in ENCODERS:
        raise FeatureFileError(path, f"holds a {kind!r}, not one of the encoders {sorted(ENCODERS)}")
    return ENCODERS[kind].load(path)
