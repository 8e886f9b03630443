"""What the catalogs of a served collection's successive generations share (:mod:`retrieval.serve.catalog`):
the upload extractors (built once, from the recorded configuration), the open local stores, recent uploads."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Dict, Union

from retrieval.features.store import LocalFeatureStore, config_json

__all__ = ["Shared", "UnsupportedUpload", "build_extractor"]

PathLike = Union[str, os.PathLike]


class UnsupportedUpload(ValueError):
    """Upload search cannot describe a new image with this index's extractor."""


def build_extractor(config: dict):
    """The global extractor that made vectors with ``config`` (as recorded in the index or feature file),
    rebuilt and checked: its configuration must equal the recorded one."""
    from retrieval.core.config import ConfigError
    from retrieval.steps.image_features import extractor_from_record

    try:
        return extractor_from_record(config)
    except ConfigError as exc:
        raise UnsupportedUpload(f"upload search needs the extractor that made the index: {exc}; search by id "
                                "instead") from None


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

    def ensure_extractor(self, config: dict) -> None:
        """Build (once) the global extractor for uploads of an index recorded with ``config``; the
        caller holds :attr:`lock`."""
        if self.extractor is not None:
            return
        if not config:
            raise UnsupportedUpload("the index records no extractor configuration, so an uploaded image "
                                    "cannot be described as the database was; search by id")
        given = self.given_extractor
        if given is not None and config_json(given.config) != config_json(config):
            raise UnsupportedUpload(f"the extractor given has configuration {config_json(given.config)}, "
                                    f"the index records {config_json(config)}")
        self.extractor = given if given is not None else build_extractor(config)

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
