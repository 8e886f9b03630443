"""ASMK: the aggregated selective match kernel (Tolias, Avrithis & Jegou, ICCV 2013; IJCV 2016), over
any local descriptors (RootSIFT, XFeat, DISK), with the reference ``asmk`` package's kernel and
inverted file.

An image is not one vector but a set: its descriptors are assigned to the nearest visual word of a
k-means codebook (the project's :func:`retrieval.features.codebook.learn_codebook`; queries may take the
``query_assignment`` nearest words), the residuals ``x - c_w`` of each word are summed, and with
``binary`` (ASMK*) each sum is binarised by its sign and packed into bits. Two images are compared
word by word: for a word both hold, ``s = 1 - 2 h / D`` (``h`` the Hamming distance of the binary
sums; the cosine for real-valued ones), passed through the selective kernel ``s^alpha`` where
``s >= tau`` and 0 elsewhere; the similarity is the sum over shared words divided by ``sqrt`` of the
two images' word counts (their self-similarities).

:class:`AsmkEncoder` learns the codebook and aggregates images; :class:`AsmkIndex` is the first-stage
search (the package's inverted file: one posting list per word); :class:`retrieval.rerank.asmk.AsmkScorer`
re-ranks a shortlist with the same similarity. The encoder is saved as ``.npz`` + JSON, never pickled.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.features.codebook import Codebook, descriptor_arrays, learn_codebook
from retrieval.features.local import LocalFeatures
from retrieval.features.npzio import load_model, save_model

PathLike = Union[str, os.PathLike]
FeatureInput = Union[LocalFeatures, np.ndarray]

__all__ = ["AsmkEncoder", "AsmkIndex", "Aggregated", "asmk_similarity"]

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


@dataclass
class Aggregated:
    """One image as ASMK sees it: ``words`` (w,) sorted visual word ids, ``residuals`` (w, D) float32
    unit sums, or (w, D/32) uint32 packed signs when binary; ``dim`` D."""

    words: np.ndarray
    residuals: np.ndarray
    dim: int

    def __len__(self) -> int:
        return len(self.words)


def _kernel(sim: np.ndarray, alpha: float, tau: float) -> np.ndarray:
    return np.where(sim >= tau, np.power(np.maximum(sim, 0.0), alpha), 0.0)


def asmk_similarity(query: Aggregated, db: Aggregated, alpha: float, tau: float, binary: bool) -> float:
    """The normalised ASMK similarity of two aggregated images (module docstring)."""
    if len(query) == 0 or len(db) == 0:
        return 0.0
    _, qi, di = np.intersect1d(query.words, db.words, assume_unique=True, return_indices=True)
    if len(qi) == 0:
        return 0.0
    if binary:
        # the package packs the signs into uint32 words: count the bits byte by byte
        xor = np.ascontiguousarray(np.bitwise_xor(query.residuals[qi], db.residuals[di]))
        hamming = _POPCOUNT[xor.view(np.uint8)].sum(axis=1)
        sim = 1.0 - 2.0 * hamming / query.dim
    else:
        sim = np.einsum("ij,ij->i", query.residuals[qi], db.residuals[di])
    return float(_kernel(sim, alpha, tau).sum() / np.sqrt(len(query) * len(db)))


class AsmkEncoder:
    """Codebook + aggregation of ASMK (``binary``: ASMK*). ``k`` words; ``alpha`` and ``tau`` the
    selective kernel's exponent and threshold (3 and 0, as in the paper and HOW); ``query_assignment``
    nearest words per query descriptor (database descriptors take one)."""

    kind = "asmk"

    def __init__(self, codebook: Optional[Codebook] = None, k: int = 8192, binary: bool = True,
                 alpha: float = 3.0, tau: float = 0.0, query_assignment: int = 1):
        if alpha <= 0 or not -1.0 <= tau < 1.0 or query_assignment < 1:
            raise ValueError(f"ASMK needs alpha > 0, tau in [-1, 1), query_assignment >= 1; got {alpha}, {tau}, "
                             f"{query_assignment}")
        self.codebook = codebook
        self.k = codebook.k if codebook is not None else int(k)
        self.binary, self.alpha, self.tau = bool(binary), float(alpha), float(tau)
        self.query_assignment = int(query_assignment)

    def fit(self, features: Sequence[FeatureInput], n_sample: int = 500_000, seed: int = 0, niter: int = 10,
            trained_on: Optional[str] = None, n_threads: Optional[int] = None) -> "AsmkEncoder":
        self.codebook = learn_codebook(features, self.k, n_sample=n_sample, seed=seed, niter=niter,
                                       metadata={"trained_on": trained_on} if trained_on else None,
                                       n_threads=n_threads)
        return self

    @property
    def config(self) -> Dict:
        return {"kind": self.kind, "k": self.k, "binary": self.binary, "alpha": self.alpha, "tau": self.tau,
                "query_assignment": self.query_assignment,
                "codebook": None if self.codebook is None else self.codebook.config}

    def _kernel_object(self):
        """The reference package's kernel over this codebook (it aggregates and binarises)."""
        kernel = _asmk_module("kernel")

        return kernel.ASMKKernel(_PackageCodebook(self.codebook), binary=self.binary)

    def aggregate(self, features: FeatureInput, query: bool = False) -> Aggregated:
        """One image's aggregated residuals (``query``: with ``query_assignment`` words per descriptor)."""
        if self.codebook is None:
            raise ValueError("the ASMK encoder has no codebook: fit() or load() it first")
        desc = descriptor_arrays([features])[0]
        dim = self.codebook.dim
        if len(desc) and desc.shape[1] != dim:
            raise ValueError(f"{desc.shape[1]}-d descriptors for a codebook of {dim}-d words")
        if len(desc) == 0:
            width = (dim + 31) // 32 if self.binary else dim
            return Aggregated(np.zeros(0, np.int64), np.zeros((0, width), np.uint32 if self.binary else np.float32), dim)
        desc = np.ascontiguousarray(desc, dtype=np.float32)
        words, _ = self.codebook.assign(desc, n_nearest=self.query_assignment if query else 1)
        residuals, ids = self._kernel_object().aggregate_image(desc, np.asarray(words).reshape(len(desc), -1))
        return Aggregated(np.asarray(ids, np.int64), np.ascontiguousarray(residuals), dim)

    def similarity(self, query: Aggregated, db: Aggregated) -> float:
        return asmk_similarity(query, db, self.alpha, self.tau, self.binary)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: PathLike) -> PathLike:
        if self.codebook is None:
            raise ValueError("nothing to save: the ASMK encoder is not fitted")
        return save_model(path, self.kind, {"centroids": self.codebook.centroids}, self.config)

    @classmethod
    def load(cls, path: PathLike) -> "AsmkEncoder":
        arrays, config = load_model(path, cls.kind)
        return cls(codebook=Codebook(arrays["centroids"], config["codebook"]), binary=bool(config["binary"]),
                   alpha=float(config["alpha"]), tau=float(config["tau"]),
                   query_assignment=int(config["query_assignment"]))


def _asmk_module(name: str):
    try:  # spelled out, so that every import stays visible in the source
        if name == "kernel":
            from asmk import kernel as module
        else:
            from asmk import inverted_file as module
        return module
    except ImportError:
        raise ImportError("ASMK needs the asmk package: pip install 'hybrid-retrieval[learned]' "
                          "(or pip install asmk; it builds a Cython extension against faiss)") from None


class _PackageCodebook:
    """What the ``asmk`` kernel reads of a codebook: its centroids."""

    def __init__(self, codebook: Codebook):
        self.centroids = codebook.centroids


class AsmkIndex:
    """First-stage ASMK search over a database: the ``asmk`` package's inverted file (one posting list
    of (image, binary residual) per word, no idf: the kernel already down-weights bursts)."""

    def __init__(self, encoder: AsmkEncoder, ids: Sequence[Hashable], features: Sequence[FeatureInput]):
        inverted_file = _asmk_module("inverted_file")

        if len(ids) != len(features):
            raise ValueError(f"{len(ids)} ids for {len(features)} images")
        self.encoder = encoder
        self.ids = [str(i) for i in ids]
        self.ivf = inverted_file.IVF.initialize_empty(codebook_size=encoder.k, use_idf=False)
        kern = encoder._kernel_object()
        self._similarity = lambda qvec, vecs, image_ids: kern.similarity(
            qvec, vecs, image_ids, alpha=encoder.alpha, similarity_threshold=encoder.tau)
        for n, feats in enumerate(features):
            agg = encoder.aggregate(feats)
            if len(agg):
                self.ivf.add(agg.residuals, agg.words, np.full(len(agg), n, np.int64))
        if self.ivf.n_images < len(self.ids):  # trailing images without words still count
            self.ivf.norm_factor = np.concatenate([self.ivf.norm_factor, np.zeros(len(self.ids) - self.ivf.n_images)])
            self.ivf.n_images = len(self.ids)

    def search(self, queries: Sequence[FeatureInput], k: int = 100) -> Tuple[List[List[str]], np.ndarray]:
        """Top ``k`` database ids per query and their similarities ((Q, k) float64)."""
        k = min(k, len(self.ids))
        out_ids, out_scores = [], np.zeros((len(queries), k))
        for row, feats in enumerate(queries):
            agg = self.encoder.aggregate(feats, query=True)
            if len(agg) == 0:
                out_ids.append(self.ids[:k])
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                ranks, scores = self.ivf.search(agg.residuals, agg.words, similarity_func=self._similarity, topk=k)
            out_ids.append([self.ids[i] for i in ranks])
            out_scores[row] = np.nan_to_num(scores)
        return out_ids, out_scores
