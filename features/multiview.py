"""View pooling (MVCNN, Su et al., "Multi-view convolutional neural networks for 3D shape
recognition", ICCV 2015): one descriptor for a *set* of views of an instance.

Every view ``v = 1..V`` goes through the same single-view network; the per-view results are pooled
element-wise across views:

* max:  ``z = max_v f_v``   (MVCNN's view pooling)
* mean: ``z = (1/V) sum_v f_v``

and the pooled result is turned into the set's descriptor. Where the pooling happens is an option:

* ``level="feature_map"``: ``f_v`` is the last convolutional feature map (C, h, w) of view v
  (``base.feature_map``); the pooled map goes through the rest of the network (``base.pool_map``:
  spatial pooling, head, L2).
* ``level="embedding"``: ``f_v`` is view v's L2-normalised descriptor (``base(x)``); the set's
  descriptor is ``L2(z)``.

Pooling is symmetric in the views (order never matters), and for V = 1 it is the identity, so a
one-view set gets exactly the single-view model's descriptor.

Any single-view network plugs in: an ``nn.Module`` with ``forward(x) -> (N, D)`` unit rows (and, for
feature-map pooling, ``feature_map(x)`` and ``pool_map(fmap)``; ``retrieval.features.efficientnet.
EfficientNetGlobal`` and ``retrieval.features.alexnet.AlexNetGlobal`` have them), wrapped by
:class:`MultiViewNet`; or any :class:`retrieval.features.global_extractor.GlobalExtractor` / callable mapping uint8 images to
(N, D) embeddings (e.g. a user's CLIP image tower), wrapped by :class:`MultiViewExtractor`
(embedding-level pooling, the only kind a black-box extractor allows).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from retrieval.features.global_extractor import GlobalExtractor
from retrieval.features.pooling import l2n

__all__ = ["VIEW_POOLINGS", "POOLING_LEVELS", "pool_views", "group_by_size", "MultiViewNet",
           "MultiViewExtractor", "pool_view_embeddings", "as_embedding_fn"]

VIEW_POOLINGS = ("max", "mean")
POOLING_LEVELS = ("feature_map", "embedding")


def pool_views(features: torch.Tensor, mode: str = "max", dim: int = 1) -> torch.Tensor:
    """Element-wise max or mean over the view axis ``dim`` (symmetric in the views)."""
    if mode == "max":
        return features.amax(dim=dim)
    if mode == "mean":
        return features.mean(dim=dim)
    raise ValueError(f"unknown view pooling {mode!r}; choose one of {VIEW_POOLINGS}")


def group_by_size(sets: Sequence[Sequence[int]]) -> Dict[int, List[int]]:
    """``{set size: positions of the sets of that size}``, so sets of equal size are pooled in one
    vectorised call. Empty sets are refused."""
    groups: Dict[int, List[int]] = {}
    for pos, members in enumerate(sets):
        n = len(members)
        if n == 0:
            raise ValueError(f"view set {pos} is empty")
        groups.setdefault(n, []).append(pos)
    return groups


class MultiViewNet(nn.Module):
    """Wraps a single-view network: ``forward((B, V, 3, H, W)) -> (B, D)`` L2-normalised rows.

    ``view_pooling``: 'max' | 'mean'; ``level``: 'feature_map' | 'embedding' (module docstring).
    A (B, 3, H, W) input is taken as B one-view sets. ``out_dim`` is the base's."""

    def __init__(self, base: nn.Module, view_pooling: str = "max", level: str = "feature_map"):
        super().__init__()
        if view_pooling not in VIEW_POOLINGS:
            raise ValueError(f"unknown view pooling {view_pooling!r}; choose one of {VIEW_POOLINGS}")
        if level not in POOLING_LEVELS:
            raise ValueError(f"unknown pooling level {level!r}; choose one of {POOLING_LEVELS}")
        if level == "feature_map" and not (hasattr(base, "feature_map") and hasattr(base, "pool_map")):
            raise TypeError(f"{type(base).__name__} has no feature_map/pool_map methods: use "
                            f"level='embedding' or give it feature_map(x) -> (N, C, h, w) and "
                            f"pool_map(fmap) -> (N, D)")
        self.base = base
        self.view_pooling = view_pooling
        self.level = level

    @property
    def out_dim(self) -> int:
        return int(self.base.out_dim)

    def view_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) single views -> what gets pooled: feature maps (N, C, h, w) or unit
        embeddings (N, D)."""
        return self.base.feature_map(x) if self.level == "feature_map" else self.base(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, V, ...) per-view features -> (B, D) set descriptors."""
        pooled = pool_views(features, self.view_pooling, dim=1)
        if self.level == "feature_map":
            return self.base.pool_map(pooled)
        # one view: the pooled embedding already is the (unit) single-view descriptor
        return pooled if features.shape[1] == 1 else l2n(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(1)
        if x.ndim != 5:
            raise ValueError(f"expected (B, V, 3, H, W) view sets or (B, 3, H, W) images, got "
                             f"{tuple(x.shape)}")
        b, v = x.shape[:2]
        features = self.view_features(x.flatten(0, 1))
        return self.pool(features.unflatten(0, (b, v)))

    def describe_sets(self, view_features: torch.Tensor, sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """Set descriptors from precomputed per-view features (rows of ``view_features``, as
        :meth:`view_features` gives them): ``sets[s]`` lists the rows of set s (any sizes). The
        single-view trunk runs once per image however many sets reuse it."""
        out = None
        for size, positions in group_by_size(sets).items():
            index = torch.as_tensor(np.asarray([sets[p] for p in positions], dtype=np.int64))
            pooled = self.pool(view_features[index.flatten()].unflatten(0, (len(positions), size)))
            if out is None:
                out = pooled.new_empty((len(sets), pooled.shape[1]))
            out[torch.as_tensor(positions)] = pooled
        return out


def pool_view_embeddings(embeddings: np.ndarray, sets: Sequence[Sequence[int]],
                         mode: str = "mean") -> np.ndarray:
    """Embedding-level view pooling in numpy: ``(N, D)`` unit per-view embeddings -> ``(S, D)``
    unit set descriptors ``L2(pool_{v in set} e_v)`` (a one-view set keeps its embedding as is)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {embeddings.shape}")
    out = np.empty((len(sets), embeddings.shape[1]), dtype=np.float32)
    for size, positions in group_by_size(sets).items():
        index = np.asarray([sets[p] for p in positions], dtype=np.int64)
        pooled = embeddings[index]  # (G, size, D)
        pooled = pooled.max(axis=1) if mode == "max" else pooled.mean(axis=1) if mode == "mean" else None
        if pooled is None:
            raise ValueError(f"unknown view pooling {mode!r}; choose one of {VIEW_POOLINGS}")
        if size > 1:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        out[np.asarray(positions)] = pooled
    return out


EmbeddingFn = Callable[[np.ndarray], np.ndarray]


def as_embedding_fn(extractor: Union[GlobalExtractor, EmbeddingFn]) -> EmbeddingFn:
    """The teacher / extractor hook: a :class:`GlobalExtractor` (its ``extract_arrays``) or any
    callable mapping a uint8 (N, H, W, 3) batch to (N, D) embeddings. Its output is checked: a
    model that returns token sequences (N, T, D) must select its global token itself (e.g. CLIP's
    projected class embedding), anything but a finite 2-D (N, D) array is refused. Rows that are
    not unit length are L2-normalised; unit rows are passed through untouched."""
    fn = extractor.extract_arrays if isinstance(extractor, GlobalExtractor) else extractor
    if not callable(fn):
        raise TypeError(f"{type(extractor).__name__} is neither a GlobalExtractor nor a callable")

    def checked(images: np.ndarray) -> np.ndarray:
        out = fn(images)
        if torch.is_tensor(out):
            out = out.detach().cpu().numpy()
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(images):
            raise ValueError(f"the extractor returned shape {out.shape} for {len(images)} images; "
                             f"it must return one (D,) global embedding per image, shape "
                             f"({len(images)}, D) (select the global token of a transformer "
                             f"yourself)")
        if not np.isfinite(out).all():
            raise ValueError("the extractor returned non-finite embeddings")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if np.abs(norms - 1.0).max(initial=0.0) > 1e-4:  # e.g. raw CLIP features: make them unit
            out = out / np.maximum(norms, 1e-12)
        return out

    return checked


class MultiViewExtractor:
    """Embedding-level view pooling around any :class:`GlobalExtractor` or embedding callable.

    ``extract_sets(view_sets)`` takes a list of sets, each a list of uint8 (H, W, 3) views, embeds
    all views in batches of ``batch_size`` and returns (S, D) unit set descriptors."""

    def __init__(self, extractor: Union[GlobalExtractor, EmbeddingFn], view_pooling: str = "mean",
                 batch_size: int = 64):
        if view_pooling not in VIEW_POOLINGS:
            raise ValueError(f"unknown view pooling {view_pooling!r}; choose one of {VIEW_POOLINGS}")
        self.embed = as_embedding_fn(extractor)
        self.view_pooling = view_pooling
        self.batch_size = int(batch_size)

    def extract_sets(self, view_sets: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        flat: List[np.ndarray] = []
        sets: List[List[int]] = []
        for views in view_sets:
            sets.append(list(range(len(flat), len(flat) + len(views))))
            flat.extend(views)
        if not flat:
            raise ValueError("no views given")
        chunks = []
        for start in range(0, len(flat), self.batch_size):
            chunks.append(self.embed(np.stack(flat[start:start + self.batch_size])))
        return pool_view_embeddings(np.concatenate(chunks), sets, self.view_pooling)
