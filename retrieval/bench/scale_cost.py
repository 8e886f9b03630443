"""The cost model of ``benchmarks/scale.py``: seconds and bytes per image of every stage, measured on
real images here, and the projected wall time of E1-E7 on full GLDv2 with N CPU workers or G GPUs.

Assumptions of the projection (all parameters of :func:`project`, printed with the table):

* image counts are GLDv2's: 761,757 index + 117,577 test images are extracted by every method;
  E2-E4 train on the clean subset (1,580,470 images) for ``epochs`` epochs;
* a training step costs ``train_factor`` (default 3) forward passes per image (backward ~ 2 forwards);
* CPU stages scale over N workers with efficiency ``cpu_efficiency`` (default 0.9: what the Ray
  SIFT scaling target asks for); index building and search run on one machine and do not scale;
* on G GPUs the network stages (global, patches, training) run at ``gpu_img_per_s`` images/s per
  GPU (default 400 for Lite0 at 512 px: an assumption, not measured here - no GPU) while SIFT,
  encoding and re-ranking stay on the N CPU workers;
* re-ranking: every test query against its top 100.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

GLDV2 = {"index": 761_757, "test": 117_577, "clean_train": 1_580_470}
EXTRACT = GLDV2["index"] + GLDV2["test"]
#: stages each experiment runs (E5-E7 re-rank E4's ranking, so they include E4's stages)
EXPERIMENTS = {
    "E1": ["global", "index_build", "search"],
    "E2": ["training", "global", "index_build", "search"],
    "E3": ["training", "global", "index_build", "search"],
    "E4": ["training", "global", "index_build", "search"],
    "E5": ["training", "global", "index_build", "search", "sift", "rerank"],
    "E6": ["training", "global", "index_build", "search", "sift", "encoding", "rerank_vlad"],
    "E7": ["training", "global", "index_build", "search", "patches", "rerank_patches"],
}
GPU_STAGES = {"global", "patches", "training"}
SINGLE_MACHINE = {"index_build", "search"}


def _per_image(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / max(1, len(items))


def measure_stages(data_root: Path, n_images: int = 8, shortlist: int = 100) -> Dict[str, dict]:
    """Seconds and stored bytes per image (per query for re-ranking) of each stage on the first
    ``n_images`` Oxford images (512 px), one process, this machine's threads."""
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.features.encoders.vlad import VladEncoder
    from retrieval.features.sift import SiftExtractor
    from retrieval.core.imageio import load_image
    from retrieval.rerank.spatial import SpatialVerifier

    files = sorted((Path(data_root) / "oxford5k_subset" / "images").glob("*.jpg"))[:n_images]
    if not files:
        raise FileNotFoundError(f"no Oxford images under {data_root}/oxford5k_subset/images")
    images = [load_image(p) for p in files]
    stages: Dict[str, dict] = {}
    sift = SiftExtractor("rootsift-2k")
    feats = []
    s = _per_image(lambda im: feats.append(sift.extract(im)), images)
    stages["sift"] = {"s_per_item": s, "bytes_per_item": float(np.mean(
        [f.keypoints.nbytes + f.descriptors.size * 2 for f in feats])), "per": "image"}
    ext = EfficientNetExtractor("lite0-gem-512", backend="auto")
    ext.extract(images[0])  # warm-up (session / graph planning)
    s = _per_image(ext.extract, images)
    stages["global"] = {"s_per_item": s, "bytes_per_item": float(ext.dim * 4), "per": "image",
                        "backend": ext.backend}
    patches = []
    s = _per_image(lambda im: patches.append(ext.extract_patches([im])[0]), images)
    stages["patches"] = {"s_per_item": s, "bytes_per_item": float(np.mean(
        [p.keypoints.nbytes + p.descriptors.size * 2 for p in patches])), "per": "image"}
    encoder = VladEncoder(k=16).fit([f.descriptors for f in feats])
    s = _per_image(lambda f: encoder.encode(f.descriptors), feats)
    stages["encoding"] = {"s_per_item": s, "bytes_per_item": float(encoder.dim * 4), "per": "image"}
    verifier = SpatialVerifier()
    reps = [feats[i % len(feats)] for i in range(shortlist)]
    start = time.perf_counter()
    verifier.score(feats[0], reps)
    stages["rerank"] = {"s_per_item": time.perf_counter() - start, "bytes_per_item": 0.0,
                        "per": f"query x top-{shortlist} (matching + RANSAC)"}
    # VLAD and patch re-ranking: a dot product per pair, negligible next to matching; counted as
    # the encoding / patch stages they read
    stages["rerank_vlad"] = {"s_per_item": 0.0, "bytes_per_item": 0.0, "per": "query (VLAD dot products)"}
    stages["rerank_patches"] = {"s_per_item": stages["rerank"]["s_per_item"] * 0.5, "bytes_per_item": 0.0,
                                "per": "query x top-100 (patch matching, estimated as half of SIFT's)"}
    return stages


def project(stages: Dict[str, dict], cpu_workers: int = 32, gpus: int = 4, gpu_img_per_s: float = 400.0,
            epochs: float = 1.0, train_factor: float = 3.0, cpu_efficiency: float = 0.9) -> List[dict]:
    """Projected wall hours of E1-E7 on full GLDv2 (assumptions in the module docstring)."""
    counts = {"global": EXTRACT, "patches": EXTRACT, "sift": EXTRACT, "encoding": EXTRACT,
              "index_build": GLDV2["index"], "search": GLDV2["test"], "rerank": GLDV2["test"],
              "rerank_vlad": GLDV2["test"], "rerank_patches": GLDV2["test"],
              "training": GLDV2["clean_train"] * epochs}

    def stage_seconds(stage: str, workers: int, use_gpu: bool) -> float:
        if stage == "training":
            per = stages["global"]["s_per_item"] * train_factor
        else:
            per = stages[stage]["s_per_item"]
        total = per * counts[stage]
        if use_gpu and stage in GPU_STAGES:
            rate = gpu_img_per_s / (train_factor if stage == "training" else 1.0)
            return counts[stage] / (rate * max(1, gpus))
        if stage in SINGLE_MACHINE or workers <= 1:
            return total
        return total / (workers * cpu_efficiency)

    rows = []
    for name, names in EXPERIMENTS.items():
        rows.append({"experiment": name, "stages": " + ".join(names),
                     "hours_1_cpu": sum(stage_seconds(s, 1, False) for s in names) / 3600,
                     f"hours_{cpu_workers}_cpu": sum(stage_seconds(s, cpu_workers, False) for s in names) / 3600,
                     f"hours_{gpus}_gpu_{cpu_workers}_cpu": sum(stage_seconds(s, cpu_workers, True)
                                                                for s in names) / 3600})
    return rows


def stage_rows(stages: Dict[str, dict], counts: Optional[Dict[str, float]] = None) -> List[dict]:
    return [{"stage": k, "s_per_item": v["s_per_item"], "bytes_per_item": v["bytes_per_item"], "per": v["per"]}
            for k, v in stages.items()]
