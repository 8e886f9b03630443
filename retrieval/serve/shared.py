"""What the catalogs of a served collection's successive generations share (:mod:`retrieval.serve.catalog`)."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Dict, Union

from retrieval.features.store import LocalFeatureStore

__all__ = ["Shared"]

PathLike = Union[str, os.PathLike]


class Shared:
    """What the catalogs of successive generations share: built once, used under one lock (h5py and
    the extractors are used by one thread at a time)."""

    def __init__(self, extractor=None):
        self.lock = threading.Lock()
        self.given_extractor = extractor  # checked against the recorded configuration on first use
        self.extractor = None
        self.local_extractor = None
        self.uploads: "OrderedDict[str, object]" = OrderedDict()  # token -> catalog.Query (recent uploads)
        self.stores: Dict[str, LocalFeatureStore] = {}  # path -> open store (files never change)

    def store(self, path: PathLike) -> LocalFeatureStore:
        key = str(path)
        with self.lock:
            if key not in self.stores:
                self.stores[key] = LocalFeatureStore(path, mode="r")
            return self.stores[key]

    def close(self) -> None:
        with self.lock:
            for store in self.stores.values():
                store.close()
            self.stores.clear()
