"""Batch samplers: which training images go into each batch of an epoch.

Both samplers are deterministic functions of ``(seed, epoch)``: :meth:`batches` returns the whole
epoch's list of index arrays, so a resumed run can skip the batches it already trained on and see
exactly the batches an uninterrupted run would have seen.

:class:`PKSampler` (metric learning): every batch holds ``P`` distinct classes with ``K`` images
each. An epoch visits every usable image about once: each class's images are shuffled and cut into
chunks of ``K``; batches are then filled with one chunk from each of ``P`` different classes, every
class's chunks spread evenly over the epoch in random order (so large classes do not
all pile up at the end; see :meth:`PKSampler.batches`); chunks that cannot complete a batch of
``P`` distinct classes at the end of the epoch are left out.

:class:`RandomBatchSampler` (classification): a shuffled permutation cut into batches.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

__all__ = ["PKSampler", "RandomBatchSampler", "encode_labels"]


def encode_labels(labels: Sequence) -> tuple:
    """Any labels -> (int64 array of class indices 0..C-1, list of the C class names), classes
    numbered in order of first appearance (vectorised with ``np.unique``)."""
    values = np.asarray(labels)
    if values.ndim != 1:
        values = np.asarray([str(v) for v in labels])
    if len(values) == 0:
        return np.zeros(0, np.int64), []
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    by_first = np.argsort(first, kind="stable")        # class order = first appearance
    rank = np.empty(len(uniq), np.int64)
    rank[by_first] = np.arange(len(uniq))
    return rank[inverse.reshape(-1)].astype(np.int64), [uniq[i].item() for i in by_first]


def _epoch_rng(seed: int, epoch: int, salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), salt]))


class RandomBatchSampler:
    """Batches of ``batch_size`` indices from a seeded per-epoch permutation of ``range(n)``."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        if n < 1:
            raise ValueError("cannot sample batches from an empty training set")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed, self.drop_last = int(n), int(batch_size), int(seed), bool(drop_last)
        if self.drop_last and self.n < self.batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} training images with drop_last=True")

    def batches(self, epoch: int) -> List[np.ndarray]:
        order = _epoch_rng(self.seed, epoch, 1).permutation(self.n)
        stop = (self.n // self.batch_size) * self.batch_size if self.drop_last else self.n
        return [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class PKSampler:
    """``P`` classes x ``K`` images per batch, batch ``b`` laid out class by class
    (``indices[p*K:(p+1)*K]`` share a label).

    ``small_classes`` says what happens to a class with fewer than ``K`` images: ``'replace'``
    (default) repeats its images to fill its one chunk of K (augmentation makes the repeats
    differ), ``'skip'`` leaves the class out. A class's last incomplete chunk is topped up with
    other images of the same class under both options (chunks never mix classes).

    ``labels``: one label per training image (any hashable values)."""

    def __init__(self, labels: Sequence, P: int, K: int, seed: int = 0, small_classes: str = "replace"):
        if P < 2:
            raise ValueError(f"P must be >= 2 (a batch needs negatives), got {P}")
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if small_classes not in ("replace", "skip"):
            raise ValueError(f"small_classes must be 'replace' or 'skip', got {small_classes!r}")
        self.labels, self.classes = encode_labels(labels)
        self.P, self.K, self.seed, self.small_classes = int(P), int(K), int(seed), small_classes
        counts = np.bincount(self.labels, minlength=len(self.classes))
        usable = (counts >= self.K) if small_classes == "skip" else (counts > 0)
        self.skipped_classes = int(np.count_nonzero(~usable & (counts > 0)))
        keep = usable[self.labels]
        # images of the usable classes grouped by class (ascending class, original order inside)
        order = np.flatnonzero(keep)
        order = order[np.argsort(self.labels[order], kind="stable")]
        self._grouped = order
        self._owner = np.repeat(np.arange(int(usable.sum())), counts[usable])
        self._sizes = counts[usable].astype(np.int64)
        if len(self._sizes) < self.P:
            raise ValueError(f"PK sampling needs at least P={self.P} classes with "
                             f"{'>= K=' + str(self.K) + ' images' if small_classes == 'skip' else 'images'}, "
                             f"found {len(self._sizes)} (of {len(self.classes)} classes)")

    def _chunks(self, rng: np.random.Generator) -> tuple:
        """All chunks of the epoch, vectorised: ``(chunks (M, K) image indices, class of each chunk,
        rank of the chunk within its class, chunks of that class)``. Each class's images are put in
        random order and cut into ``ceil(n / K)`` chunks; the last one is filled up cyclically with
        the class's first images (which sit in another chunk), and a class with ``n < K`` images
        (``'replace'``) repeats its images cyclically in its one chunk."""
        sizes, owner = self._sizes, self._owner
        shuffled = self._grouped[np.lexsort((rng.random(len(owner)), owner))]  # grouped by class, random inside
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        n_chunks = np.maximum(1, -(-sizes // self.K))
        slots = n_chunks * self.K
        slot_class = np.repeat(np.arange(len(sizes)), slots)
        slot_rank = np.arange(slots.sum()) - np.repeat(np.cumsum(slots) - slots, slots)
        picks = shuffled[starts[slot_class] + slot_rank % sizes[slot_class]]
        chunks = picks.reshape(-1, self.K)
        chunk_class = slot_class[:: self.K]
        chunk_rank = slot_rank[:: self.K] // self.K
        return chunks, chunk_class, chunk_rank, n_chunks[chunk_class]

    def batches(self, epoch: int) -> List[np.ndarray]:
        """The epoch's batches. Chunks are ordered by ``(rank + u) / chunks_of_class`` with
        ``u ~ U(0, 1)``, which spreads every class's chunks evenly over the epoch in random order;
        batches are filled from that stream, a chunk whose class is already in the batch waiting
        for the next batch. O(M log M) for M chunks."""
        rng = _epoch_rng(self.seed, epoch, 2)
        chunks, chunk_class, rank, per_class = self._chunks(rng)
        order = np.argsort((rank + rng.random(len(rank))) / per_class, kind="stable")
        batches: List[np.ndarray] = []
        current: List[int] = []
        classes_in: set = set()
        waiting: List[int] = []
        for j in order.tolist():
            c = int(chunk_class[j])
            if c in classes_in:
                waiting.append(j)
                continue
            current.append(j)
            classes_in.add(c)
            if len(current) == self.P:
                batches.append(chunks[current].reshape(-1))
                current, classes_in = [], set()
                still = []
                for w in waiting:  # waiting chunks go first into the next batch
                    cw = int(chunk_class[w])
                    if cw in classes_in or len(current) == self.P:
                        still.append(w)
                    else:
                        current.append(w)
                        classes_in.add(cw)
                waiting = still
                if len(current) == self.P:
                    batches.append(chunks[current].reshape(-1))
                    current, classes_in = [], set()
        return batches

    def __len__(self) -> int:
        return len(self.batches(0))
