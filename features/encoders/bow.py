"""Bag of visual words (Sivic & Zisserman 2003) with tf-idf, and its inverted file.

Steps: codebook (k-means, :mod:`retrieval.features.codebook`) -> quantise each descriptor to its nearest word
(or, with ``n_nearest > 1``, softly to its ``n_nearest`` nearest words with weights
``exp(-d^2 / (2 sigma^2))`` normalised to sum 1 per descriptor, Philbin et al. CVPR 2008) -> term
frequencies ``tf_w`` = (weighted) count of word ``w`` in the image -> burstiness damping
``tf_w ** tf_power`` (``tf_power = 0.5`` is the square-root/power-law damping of repeated structures,
Jegou et al. CVPR 2009) -> ``tf_w * idf_w`` with ``idf_w = log(N / n_w)``, ``N`` images of the idf
set and ``n_w`` of them containing ``w`` (a word that none contains gets ``idf = 0``: it can match
nothing in that set) -> L2 normalisation. The cosine of two such vectors is the tf-idf score.

idf is learned by :meth:`BowEncoder.fit` on the images given to it, or separately with
:meth:`BowEncoder.fit_idf`: the Oxford protocol learns it on the database that is searched (the
benchmark does so and says so).

:class:`BowInvertedIndex` stores the database as a sparse ``(N, k)`` CSR matrix and keeps its transpose
(one posting list of (image, weight) per word). A search is one sparse product ``Q @ D^T``: only the
words a query contains are visited, and the scores are exactly the dense cosine similarities.
"""
from __future__ import annotations

import os
from typing import Dict, Hashable, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp

from retrieval.features.codebook import Codebook, learn_codebook
from retrieval.features.npzio import load_model, save_model
from retrieval.features.encoders.encoder import Batch, FeatureInput, LocalEncoder, batches_by_descriptors

PathLike = Union[str, os.PathLike]

__all__ = ["BowEncoder", "BowInvertedIndex"]


class BowEncoder(LocalEncoder):
    """tf-idf bag of words over a ``k``-word codebook; :attr:`dim` = ``k``.

    ``codebook``: a trained :class:`~retrieval.features.codebook.Codebook` (else :meth:`fit` learns one with
    ``k``, ``seed``, ``n_sample``, ``niter``, ``max_points_per_centroid``). ``n_nearest`` / ``sigma``:
    soft assignment (``n_nearest=1`` is hard assignment). ``tf_power``: burstiness damping.
    ``idf``: weight by inverse document frequency.
    """

    kind = "bow"

    def __init__(self, codebook: Optional[Codebook] = None, k: int = 1000, n_nearest: int = 1,
                 sigma: Optional[float] = None, tf_power: float = 1.0, idf: bool = True, seed: int = 0,
                 n_sample: int = 1_000_000, niter: int = 20, max_points_per_centroid: int = 256,
                 trained_on: Optional[str] = None):
        if n_nearest < 1:
            raise ValueError("n_nearest must be >= 1")
        if n_nearest > 1 and not (sigma and sigma > 0):
            raise ValueError("soft assignment (n_nearest > 1) needs a positive sigma")
        if not tf_power > 0:
            raise ValueError("tf_power must be > 0")
        self.codebook = codebook
        self.k = codebook.k if codebook is not None else int(k)
        self.n_nearest = int(n_nearest)
        self.sigma = None if sigma is None else float(sigma)
        self.tf_power = float(tf_power)
        self.use_idf = bool(idf)
        self.seed, self.n_sample, self.niter = int(seed), int(n_sample), int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.trained_on = trained_on
        self.idf: Optional[np.ndarray] = None
        self.idf_info: Dict = {}

    # -- learning ------------------------------------------------------------------------------
    def fit(self, features: Sequence[FeatureInput], fit_idf: bool = True) -> "BowEncoder":
        """Learn the codebook (unless one was given) and, with ``fit_idf``, the idf on ``features``."""
        if self.codebook is None:
            self.codebook = learn_codebook(features, self.k, n_sample=self.n_sample, seed=self.seed,
                                           niter=self.niter,
                                           max_points_per_centroid=self.max_points_per_centroid,
                                           metadata={"trained_on": self.trained_on})
        if self.use_idf and fit_idf:
            self.fit_idf(features)
        return self

    def fit_idf(self, features: Sequence[FeatureInput], trained_on: Optional[str] = None) -> "BowEncoder":
        """``idf_w = log(N / n_w)`` over these ``N`` images (0 for words none of them contains)."""
        return self.fit_idf_from_tf(self.term_frequencies(features), trained_on=trained_on)

    def fit_idf_from_tf(self, tf: sp.spmatrix, trained_on: Optional[str] = None) -> "BowEncoder":
        """:meth:`fit_idf` from raw term frequencies already computed (:meth:`term_frequencies`), so one
        quantisation of the database serves both idf and encoding."""
        tf = sp.csr_matrix(tf)
        tf.eliminate_zeros()
        n_docs = tf.shape[0]
        if n_docs == 0:
            raise ValueError("cannot learn idf from zero images")
        if tf.shape[1] != self.k:
            raise ValueError(f"term frequencies over {tf.shape[1]} words for a {self.k}-word encoder")
        doc_freq = np.bincount(tf.indices, minlength=self.k).astype(np.float64)
        idf = np.zeros(self.k, dtype=np.float64)
        seen = doc_freq > 0
        idf[seen] = np.log(n_docs / doc_freq[seen])
        self.idf = idf.astype(np.float32)
        self.idf_info = {"n_images": int(n_docs), "trained_on": trained_on or self.trained_on}
        return self

    # -- encoding ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.codebook is not None and (self.idf is not None or not self.use_idf)

    @property
    def dim(self) -> int:
        return int(self.k)

    @property
    def input_dim(self) -> int:
        if self.codebook is None:
            raise RuntimeError("BowEncoder has no codebook yet: call fit() first")
        return self.codebook.dim

    @property
    def config(self) -> Dict:
        return {"type": "bow", "k": self.k, "n_nearest": self.n_nearest, "sigma": self.sigma,
                "tf_power": self.tf_power, "idf": self.use_idf, "idf_info": self.idf_info,
                "codebook": None if self.codebook is None else self.codebook.config}

    def _word_weights(self, batch: Batch) -> sp.csr_matrix:
        """(B, k) raw term frequencies (soft-assignment weighted) of a batch."""
        idx, sq = self.codebook.assign(batch.x, self.n_nearest)
        if self.n_nearest == 1:
            weights = np.ones(len(idx), dtype=np.float32)
        else:
            # subtract each row's nearest distance before exp: same normalised weights, no underflow
            w = np.exp(-(sq - sq[:, :1]) / (2.0 * self.sigma ** 2)).astype(np.float32)
            weights = (w / w.sum(axis=1, keepdims=True)).ravel()
        rows = np.repeat(batch.owner, self.n_nearest)
        tf = sp.coo_matrix((weights, (rows, idx.ravel())), shape=(batch.size, self.k), dtype=np.float32)
        tf = tf.tocsr()  # sums repeated (image, word) pairs
        tf.sum_duplicates()
        tf.eliminate_zeros()
        return tf

    def term_frequencies(self, features: Sequence[FeatureInput]) -> sp.csr_matrix:
        """(N, k) raw term frequencies of many images (no damping, idf or normalisation)."""
        if self.codebook is None:
            raise RuntimeError("BowEncoder has no codebook yet: call fit() first")
        return self._sparse(features, final=False)

    def encode_sparse(self, features: Sequence[FeatureInput]) -> sp.csr_matrix:
        """(N, k) float32 CSR tf-idf vectors with unit L2 norm (empty images: empty rows), the input of
        :class:`BowInvertedIndex`. Same values as :meth:`encode_many`, kept sparse."""
        self._check_fitted()
        return self._sparse(features, final=True)

    def _sparse(self, features: Sequence[FeatureInput], final: bool) -> sp.csr_matrix:
        arrays = self._arrays_of(features)
        parts = []
        for lo, hi in batches_by_descriptors(arrays, self.batch_descriptors):
            batch = Batch(arrays[lo:hi], self.input_dim)
            tf = self._word_weights(batch)
            parts.append(self.weight(tf) if final else tf)
        if not parts:
            return sp.csr_matrix((0, self.k), dtype=np.float32)
        return sp.vstack(parts, format="csr").astype(np.float32)

    def weight(self, tf: sp.spmatrix) -> sp.csr_matrix:
        """Raw term frequencies (:meth:`term_frequencies`) -> final vectors: damping, idf, L2 (sparse).
        ``encode_sparse(f) == weight(term_frequencies(f))``; encoders that differ only in ``tf_power``
        or idf can share one quantisation this way."""
        self._check_fitted()
        tf = sp.csr_matrix(tf, dtype=np.float32, copy=True)
        if tf.shape[1] != self.k:
            raise ValueError(f"term frequencies over {tf.shape[1]} words for a {self.k}-word encoder")
        if self.tf_power != 1.0:
            np.power(tf.data, self.tf_power, out=tf.data)
        if self.use_idf:
            tf.data *= self.idf[tf.indices]
        tf.eliminate_zeros()
        norms = np.sqrt(np.asarray(tf.multiply(tf).sum(axis=1)).ravel())
        row_norm = np.repeat(norms, np.diff(tf.indptr))
        tf.data /= np.where(row_norm > 0, row_norm, 1.0).astype(np.float32)
        return tf

    def _encode_batch(self, batch: Batch) -> np.ndarray:
        return self.weight(self._word_weights(batch)).toarray().astype(np.float32, copy=False)

    # -- files ---------------------------------------------------------------------------------
    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays = {"centroids": self.codebook.centroids}
        if self.idf is not None:
            arrays["idf"] = self.idf
        return arrays

    @classmethod
    def _from_saved(cls, arrays: Dict[str, np.ndarray], config: Dict) -> "BowEncoder":
        enc = cls(codebook=Codebook(arrays["centroids"], config["codebook"]),
                  n_nearest=int(config["n_nearest"]), sigma=config["sigma"], tf_power=float(config["tf_power"]),
                  idf=bool(config["idf"]))
        if "idf" in arrays:
            if arrays["idf"].shape != (enc.k,):
                raise ValueError(f"idf of shape {arrays['idf'].shape} for {enc.k} words")
            enc.idf = arrays["idf"].astype(np.float32)
        enc.idf_info = dict(config.get("idf_info") or {})
        return enc


class BowInvertedIndex:
    """Inverted file over L2-normalised sparse BoW vectors; scores are cosine similarities, identical to
    a dense inner product of the same vectors.

    ``BowInvertedIndex(doc_vectors, ids=None)`` with ``doc_vectors`` an (N, k) scipy sparse matrix (or
    dense array); :meth:`search` returns a :class:`retrieval.indexing.index.Ranking` (ties: lower database row
    first, as :class:`retrieval.Index` orders them).
    """

    def __init__(self, doc_vectors, ids: Optional[Sequence[Hashable]] = None):
        docs = sp.csr_matrix(doc_vectors, dtype=np.float32)
        if docs.ndim != 2:
            raise ValueError("doc_vectors must be a 2-D (N, k) matrix")
        self.n_docs, self.n_words = docs.shape
        self.ids = np.asarray(list(ids) if ids is not None else np.arange(self.n_docs))
        if len(self.ids) != self.n_docs:
            raise ValueError(f"{len(self.ids)} ids for {self.n_docs} documents")
        if len(set(self.ids.tolist())) != len(self.ids):
            raise ValueError("database ids must be unique")
        # word -> (doc, weight) posting lists
        self.postings = docs.T.tocsr()
        self.postings.sort_indices()

    @property
    def nnz(self) -> int:
        return int(self.postings.nnz)

    def scores(self, queries) -> np.ndarray:
        """(Q, N) float32 cosine scores of sparse or dense (Q, k) query vectors."""
        q = sp.csr_matrix(queries, dtype=np.float32)
        if q.shape[1] != self.n_words:
            raise ValueError(f"queries have {q.shape[1]} words, the index {self.n_words}")
        return np.asarray((q @ self.postings).toarray(), dtype=np.float32)

    def search(self, queries, k: int = 100, query_ids: Optional[Sequence[Hashable]] = None,
               block: int = 256):
        """Top-``k`` database images per query, best first (blocks of ``block`` queries at a time)."""
        from retrieval.indexing.index import Ranking

        if isinstance(k, bool) or int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = sp.csr_matrix(queries, dtype=np.float32)
        k = min(int(k), self.n_docs)
        nq = q.shape[0]
        rows = np.zeros((nq, k), dtype=np.int64)
        vals = np.zeros((nq, k), dtype=np.float32)
        for lo in range(0, nq, block):
            s = self.scores(q[lo:lo + block])
            rows[lo:lo + len(s)], vals[lo:lo + len(s)] = _top_k_rows(s, k)
        return Ranking(ids=self.ids[rows], scores=vals, indices=rows, query_ids=query_ids)

    def save(self, path: PathLike):
        p = self.postings
        return save_model(path, "bow-inverted-index",
                          {"data": p.data, "indices": p.indices, "indptr": p.indptr,
                           "ids": self.ids.astype(str) if self.ids.dtype.kind in "OUS" else self.ids},
                          {"n_docs": self.n_docs, "n_words": self.n_words,
                           "id_type": "str" if self.ids.dtype.kind in "OUS" else "int"})

    @classmethod
    def load(cls, path: PathLike) -> "BowInvertedIndex":
        arrays, config = load_model(path, "bow-inverted-index")
        try:
            postings = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                                     shape=(config["n_words"], config["n_docs"]))
        except (KeyError, ValueError) as exc:
            from retrieval.features.store import FeatureFileError
            raise FeatureFileError(path, f"damaged inverted file ({exc})") from None
        return cls(postings.T, ids=arrays["ids"].tolist())


def _top_k_rows(scores: np.ndarray, k: int):
    """Per row: the ``k`` largest scores, best first, equal scores by lower column (exact at the cut)."""
    n = scores.shape[1]
    out_rows = np.empty((len(scores), k), dtype=np.int64)
    out_vals = np.empty((len(scores), k), dtype=np.float32)
    for r, s in enumerate(scores):  # one row per query, vectorised within
        if k < n:
            kth = np.partition(s, n - k)[n - k]
            cand = np.flatnonzero(s >= kth)
        else:
            cand = np.arange(n)
        order = np.lexsort((cand, -s[cand]))[:k]
        out_rows[r] = cand[order]
        out_vals[r] = s[cand[order]]
    return out_rows, out_vals
