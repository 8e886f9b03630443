"""The ladder's settings (:class:`LadderConfig`, the ``ladder`` experiment kind), in the one
configuration idiom (:mod:`retrieval.core.config`): an experiment file's tables map onto these sections
and ``--set object.sift=rootsift-1k`` style dotted overrides change any field.

Two halves, each optional:

* ``object``: the trained rungs. GLDv2-format data (``dataset = "gldv2"``), any labelled ``folder``
  (split by label into training and test classes, every ``query_step``-th test image a query), or
  COIL-100 (``coil100``, the default: exported to GLDv2 format in the cache). E1 ImageNet, E2-E4
  trained on the training images, re-rankers on E4's shortlist. Metric: mAP@100 over Public /
  Private (the GLDv2 usage split; Public and Private are the two cross-fitting groups).
* ``landmark``: no training. Any ``oxford`` / ``paris`` / ``revisited`` / ``gldv2`` dataset: E1 and
  the re-rankers on E1's shortlist, under each relevance protocol of ``protocols`` (``official``:
  the dataset's own ground truth, e.g. Oxford's good + ok with junk ignored; ``landmark``: every image
  of the query's landmark relevant, ``protocol="landmark"`` of :func:`retrieval.evaluation.evaluate.evaluate_per_query`;
  ``revisited-easy`` / ``revisited-medium`` / ``revisited-hard``: the official revisited ground truth restricted to the
  images present, :mod:`.revisited`). Cross-fitting groups:
  two folds of landmarks (:func:`retrieval.core.crossfit.fold_groups`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from retrieval.core.config import Config, ConfigError
from retrieval.core.dataset_kinds import LANDMARK_KINDS
from retrieval.rerank.fusion import FusionSettings
from retrieval.steps.expand import ExpandConfig

__all__ = ["with_dataset", "ObjectConfig", "LandmarkConfig", "LadderConfig", "RERANKERS", "OPT_IN_RERANKERS",
           "OBJECT_KINDS", "LANDMARK_KINDS", "RELEVANCE", "STAGES"]

#: re-ranking rungs: E5 ratio test, E6 VLAD, E7 patch tokens, SV spatial verification, E8 alpha-QE + DBA
RERANKERS = ("E5", "E6", "E7", "SV", "E8")
#: re-rankers run only when named (``--set 'rerankers=["E5","E6","E7","SV","E8","ASMK"]'``): ASMK* over the
#: spatial-verification RootSIFT (its codebook and aggregation cost more than a cold ``make bench`` allows)
OPT_IN_RERANKERS = ("ASMK",)
OBJECT_KINDS = ("coil100", "gldv2", "folder")
RELEVANCE = ("official", "landmark", "revisited-easy", "revisited-medium", "revisited-hard")
#: the cached stages a run can recompute (``recompute``)
STAGES = ("data", "train", "global", "sift", "vlad", "asmk", "patch", "shortlist", "landmark")


@dataclass(frozen=True)
class ObjectConfig(Config):
    enabled: bool = True
    dataset: str = "coil100"
    data: str = ""                          # "" = <data_root>/coil100 (coil100), else the dataset folder
    gldv2_protocol: str = "kaggle"          # gldv2: Kaggle's index/test split, or "thesis" (gldv2_tables)
    train_fraction: float = 0.5             # folder: first half of the labels (natural order) train
    query_step: int = 8                     # folder / coil100: every query_step-th test image a query
    train_config: str = "coil"              # family: coil -> coil-e2 / coil-e3 / coil-e4
    train_set: Tuple[str, ...] = ()         # "e3.loop.epochs=2": dotted overrides of one rung's training
    global_config: str = "auto"             # auto: lite0-coil-128 on coil100 / folder, else lite0-gem-512
    patch_config: str = "lite0-patch-224"
    sift: str = "rootsift-small"
    spatial_sift: str = ""                  # "" = sift
    spatial: str = "affine-ransac-mutual"   # rerank.spatial.SPATIAL_CONFIGS
    vlad_words: int = 64
    asmk_words: int = 1024                  # ASMK (opt-in): codebook words, learned on the training images
    asmk_sample: int = 100_000              # descriptors sampled for its k-means

    def check(self) -> None:
        if self.dataset not in OBJECT_KINDS:
            raise ConfigError(f"object.dataset must be one of {OBJECT_KINDS}, got {self.dataset!r}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"object.train_fraction must be in (0, 1), got {self.train_fraction}")
        for item in self.train_set:
            head = item.split(".", 1)[0].lower()
            if head not in ("e2", "e3", "e4") or "=" not in item:
                raise ConfigError(f"object.train_set entries are RUNG.KEY=VALUE with RUNG e2, e3 or e4, got {item!r}")


@dataclass(frozen=True)
class LandmarkConfig(Config):
    enabled: bool = True
    dataset: str = "oxford"
    data: str = ""                          # "" = <data_root>/oxford5k_subset
    protocols: Tuple[str, ...] = ("official", "landmark")
    revisited_gnd: str = ""                 # revisited-*: "" = <data_root>/revisitop/gnd_roxford5k.pkl (.revisited)
    global_config: str = "lite0-blocks-gem-ms-512"
    patch_config: str = "lite0-patch-224"
    patch_size: int = 512
    sift: str = "rootsift-1k"
    # spatial verification: upright RootSIFT, more keypoints (a lower contrast threshold) at 512 px
    spatial_sift: str = "rootsift-upright-c02-4k"
    spatial: str = "affine-ransac-mutual"
    vlad_words: int = 64
    asmk_words: int = 1024                  # ASMK (opt-in): codebook words, learned on the database images
    asmk_sample: int = 100_000              # descriptors sampled for its k-means

    def check(self) -> None:
        if self.dataset not in LANDMARK_KINDS:
            raise ConfigError(f"landmark.dataset must be one of {LANDMARK_KINDS}, got {self.dataset!r}")
        bad = [p for p in self.protocols if p not in RELEVANCE]
        if bad or not self.protocols:
            raise ConfigError(f"landmark.protocols must be a non-empty subset of {RELEVANCE}, got {self.protocols}")


@dataclass(frozen=True)
class LadderConfig(Config):
    """The whole ladder (module docstring). ``data_root``: the folder holding ``coil100/`` and
    ``oxford5k_subset/`` ("" = :func:`retrieval.core.paths.data_root`: $RETRIEVAL_DATA, else ../shared/data);
    ``recompute``: stages (:data:`STAGES`) whose cached results are ignored."""

    data_root: str = ""
    quick: bool = False
    device: str = "auto"
    backend: str = "auto"
    n_jobs: int = 2
    # "ray": extraction (global, patches, SIFT) runs as sharded Ray work and local scoring as Ray tasks
    # (retrieval.scale.engine); "local" is the in-process path. The features and scores do not depend on it.
    engine: str = "local"
    ray_address: Optional[str] = None
    shortlist: int = 100
    rerankers: Tuple[str, ...] = RERANKERS
    object: ObjectConfig = field(default_factory=ObjectConfig)
    landmark: LandmarkConfig = field(default_factory=LandmarkConfig)
    # the one fusion configuration (retrieval.rerank.fusion.FusionSettings): on the ladder's labelled
    # queries "auto" cross-fits method, T and v; a candidate must beat the base ranking by more than
    # fusion.min_gain (mean AP, 0.005 = 0.5 points) on the choosing queries to be used
    fusion: FusionSettings = field(default_factory=FusionSettings)
    expansion: ExpandConfig = field(default_factory=ExpandConfig)
    n_query_figures: int = 4
    progress: bool = True
    recompute: Tuple[str, ...] = ()

    def root(self) -> Path:
        """The data root (``data_root``, default :func:`retrieval.core.paths.data_root`): the folder holding
        ``coil100/``, ``oxford5k_subset/`` and ``revisitop/``."""
        from retrieval.core.paths import data_root

        return Path(self.data_root) if self.data_root else Path(data_root())

    def check(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        bad = [r for r in self.rerankers if r not in RERANKERS + OPT_IN_RERANKERS]
        if bad:
            raise ConfigError(f"unknown re-ranker(s) {bad}; known: {RERANKERS + OPT_IN_RERANKERS}")
        if not self.fusion.chooses(has_ground_truth=True):
            raise ConfigError(f"fusion.method {self.fusion.method!r}: the ladder chooses every fusion on held-out "
                              f"queries ('auto' or 'cross-fit')")
        if self.shortlist < 1:
            raise ConfigError(f"shortlist must be >= 1, got {self.shortlist}")
        unknown = [stage for stage in self.recompute if stage not in STAGES]
        if unknown:
            raise ConfigError(f"recompute: unknown stage(s) {unknown}; stages: {list(STAGES)}")
        if not (self.object.enabled or self.landmark.enabled):
            raise ConfigError("both halves are disabled: enable object or landmark")


def with_dataset(conf: LadderConfig, kind: Optional[str], path: Optional[str]) -> LadderConfig:
    """``conf`` run on dataset ``kind`` at ``path`` (``--dataset KIND --data PATH``): ``folder`` /
    ``gldv2`` -> the object half alone (trained), ``oxford`` / ``paris`` / ``revisited`` -> the
    landmark half alone (no training). The folder holding ``coil100/`` and ``oxford5k_subset/`` is
    not a dataset: it is ``data_root`` (``--data-root``)."""
    if kind is None:
        if path:
            raise ConfigError(f"--data {path} needs --dataset KIND (the dataset's reader); the folder holding "
                              f"coil100/ and oxford5k_subset/ is --data-root")
        return conf
    if kind in OBJECT_KINDS:
        half, other = "object", "landmark"
    elif kind in LANDMARK_KINDS:
        half, other = "landmark", "object"
    else:
        raise ConfigError(f"unknown dataset kind {kind!r}; the ladder takes {sorted(set(OBJECT_KINDS + LANDMARK_KINDS))}")
    if not path:
        raise ConfigError(f"dataset {kind} needs its folder (--data PATH)")
    return conf.override({f"{half}.dataset": kind, f"{half}.data": str(path), f"{half}.enabled": True,
                          f"{other}.enabled": False})
