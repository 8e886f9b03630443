"""Multi-view instance retrieval on any multi-view set: teacher, MV-AlexNet, and distillation kept only
where held-out seen instances say it helps. Experiment kind ``multiview`` (``retrieval run multiview [--quick]``;
``benchmarks/multiview.py`` is the same).

1. Read the set (``[dataset]``, ``kind`` and ``path``: ``folder`` with a ``labels.csv`` = filename,
   object_id and azimuth_deg [elevation_deg] or view_index, :func:`retrieval.datasets.viewsets.read_view_catalog`;
   ``folder`` without one, a class-per-folder tree, one object per class; ``multiview``, the
   DS|DU tree, one object per instance, DS seen and DU unseen unless ``seen`` / ``unseen`` say
   otherwise: :func:`retrieval.datasets.view_layouts.read_views`), decode every image once (cached). Objects: seen (``seen``, default the first ``seen_fraction`` of the ids) and
   unseen (the rest). Every ``validation_every``-th seen object is held out for validation (VAL);
   the others (DS) are all that any model trains on.
2. Teacher: EfficientNet-Lite0 (ImageNet weights, GeM) fine-tuned on DS (``coil-e3``: contrastive,
   P x K), mean view pooling of its unit embeddings; or ``teacher_embeddings``, a user's file.
3. MV-AlexNet: AlexNet-style trunk (random init) + max view pooling of conv5 + GeM + linear, triplet.
4. Distillation candidates: from MV-AlexNet, similarity-KL (temperature ``temperature``) on centred
   teacher embeddings + triplet, one run per weight in ``distill_weights``, kept after each epoch
   count in ``distill_epochs``. The delivered student is chosen among them and the undistilled
   MV-AlexNet by mAP@100 on VAL (:func:`retrieval.experiments.mv_models.choose_student`; ties: no
   distillation). Unseen objects never take part in any choice.
5. Evaluation (:func:`retrieval.experiments.mv_eval.evaluate_sets`): DS, DU, VAL and every set in
   ``cross_data`` (another dataset evaluated whole as unseen objects, e.g. COIL-20), each object's views
   cut into ``n_sets`` sets, leave-one-set-out, ``test_views`` sampled query views, the database sets
   pooled from all their views (and from each count in ``db_views``). Relevant = same object.
6. Parameters and images per second (CPU, batch inference, one process: ratios hold).

Outputs: results.json, results.md, map_vs_views.png; every model and embedding is cached under the
cache folder, so a rerun resumes. ``features`` instead evaluates a file of pre-extracted features
(:mod:`retrieval.experiments.mv_features`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from retrieval.core.config import Config, ConfigError
from retrieval.datasets.view_layouts import read_views
from retrieval.datasets.viewsets import read_view_catalog, split_objects, split_view_sets
from retrieval.datasets.open import DatasetConfig
from retrieval.core.paths import data_path, data_root

__all__ = ["CONFIG", "MultiViewConfig", "main", "resolve_data"]


@dataclass(frozen=True)
class MultiViewConfig(Config):
    """Settings of the multi-view protocol (module docstring). Relative data paths are under the data
    root (:func:`retrieval.core.paths.data_root`)."""

    # kind folder (labels.csv with object_id: views with their geometry; else a class-per-folder tree)
    # or multiview (the DS|DU tree); a relative path is read under the data root
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(kind="folder", path="coil100"))
    cross_data: Tuple[str, ...] = ("coil20",)  # labels.csv view sets
    seen: Tuple[int, ...] = ()
    unseen: Tuple[int, ...] = ()
    seen_fraction: float = 0.5
    validation_every: int = 5
    max_objects: int = 0  # > 0: only the first N objects of every split (quick runs)
    n_sets: int = 6
    view_stride: int = 1  # > 1: keep every view_stride-th view of each object (shorter runs)
    test_views: Tuple[int, ...] = (1, 3, 6, 12)
    db_views: Tuple[int, ...] = ()  # database views per set swept besides "all"
    validation_views: Tuple[int, ...] = (1, 3)
    seed: int = 0
    image_size: int = 128
    teacher_epochs: int = 1
    student_epochs: int = 4
    distill_epochs: Tuple[int, ...] = (4, 8)
    distill_weights: Tuple[float, ...] = (1.0,)
    distill_lr: float = 5e-4
    distill_views: Tuple[int, ...] = (1, 2, 3)
    student_width: str = "alexnet"
    temperature: float = 0.5
    feature_weight: float = 0.0
    metric_weight: float = 1.0
    center_teacher: bool = True
    transfer: Tuple[str, ...] = ()
    transfer_batch: int = 64
    batch_p: int = 16
    max_steps_per_epoch: int = 0
    teacher_embeddings: Optional[str] = None
    features: Optional[str] = None
    speed_images: int = 256
    threads: int = 0

    def check(self) -> None:
        if self.dataset.kind not in ("folder", "multiview"):
            raise ConfigError(f"dataset.kind must be folder (labels.csv or class folders) or multiview (the "
                              f"DS|DU tree), got {self.dataset.kind!r}")
        if self.view_stride < 1:
            raise ConfigError(f"view_stride must be >= 1, got {self.view_stride}")
        if self.validation_every < 2:
            raise ConfigError(f"validation_every must be >= 2 (one seen object in N held out), got "
                              f"{self.validation_every}")
        if not self.distill_epochs or min(self.distill_epochs) < 1:
            raise ConfigError(f"distill_epochs must be positive epoch counts, got {self.distill_epochs}")
        if any(w <= 0 for w in self.distill_weights):
            raise ConfigError("distill_weights must be > 0 (no distillation is always a candidate)")
        if not set(self.validation_views) <= set(self.test_views):
            raise ConfigError(f"validation_views {self.validation_views} must be among test_views")
        clash = set(self.transfer) & {Path(c).name for c in self.cross_data}
        if clash:
            raise ConfigError(f"transfer sources {sorted(clash)} are evaluated as unseen (cross_data): "
                              f"distilling on them would leak the test set")


CONFIG = MultiViewConfig


def resolve_data(path: str) -> Path:
    return data_path(path)


def view_layout(dataset: DatasetConfig, root: Path) -> str:
    """The :func:`~retrieval.datasets.view_layouts.read_views` layout of ``dataset``: ``multiview``
    for that kind; for a folder, ``views`` when its labels.csv numbers objects (``object_id``, with
    the view geometry when given), else ``folder`` (one object per class)."""
    if dataset.kind == "multiview":
        return "multiview"
    labels = root / "labels.csv"
    if labels.is_file():
        with open(labels, encoding="utf-8", errors="replace") as fh:
            header = [c.strip() for c in fh.readline().split(",")]
        if "object_id" in header:
            return "views"
    return "folder"


def main(conf: MultiViewConfig, out_dir: Path, cache_dir: Optional[Path] = None) -> Path:
    """Run the protocol; returns ``out_dir`` (results.json, results.md, map_vs_views.png)."""
    from retrieval.experiments import mv_eval, mv_models as mm
    from retrieval.features.alexnet import count_parameters
    from retrieval.core.fileio import atomic_write_text
    from retrieval.features.multiview import pool_view_embeddings
    from retrieval.core.report import StageTimer, markdown_table, peak_rss_mb, write_results
    from retrieval.training.settings import TRAIN_CONFIGS
    from retrieval.training.distill import DistillConfig, TransferSet, compute_teacher_embeddings, distill_mv_alexnet
    from retrieval.training.embedding import load_trained_efficientnet, read_trained_config
    from retrieval.training.multiview import load_mv_alexnet, train_mv_alexnet
    from retrieval.training.siamese import train_siamese

    conf = CONFIG.from_dict(conf) if isinstance(conf, dict) else conf
    out_dir = Path(out_dir)
    if conf.features:
        from retrieval.experiments.mv_features import evaluate_file

        return evaluate_file(resolve_data(conf.features), out_dir, conf.test_views, conf.db_views, conf.seed)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    if conf.threads > 0:
        torch.set_num_threads(conf.threads)
    timer = StageTimer()
    root = resolve_data(conf.dataset.path)
    title = root.name

    def first(objects):
        return tuple(objects[:conf.max_objects]) if conf.max_objects else tuple(objects)

    def thinned(cat, objects):
        rows = cat.rows_of(objects)
        return cat.subset(rows[cat.order[rows] % conf.view_stride == 0])

    catalog, tree_split = read_views(view_layout(conf.dataset, root), root)
    if tree_split is not None and not conf.seen and not conf.unseen:
        seen, unseen = tree_split  # the DS|DU tree's own seen / unseen objects
    else:
        seen, unseen = split_objects(catalog.objects(), conf.seen, conf.unseen, conf.seen_fraction)
    seen, unseen = first(seen), first(unseen)
    val = seen[conf.validation_every - 1::conf.validation_every]
    train = tuple(o for o in seen if o not in set(val))
    if not val or len(train) < 2:
        raise SystemExit(f"{root}: {len(seen)} seen objects cannot give a validation split "
                         f"(validation_every={conf.validation_every})")
    catalog = thinned(catalog, seen + unseen)
    with timer("decode"):
        images = mm.decoded_array(catalog.paths, cache / "images.npy", what=f"{title} images")
    sets_by_split = {"DS": split_view_sets(catalog, train, conf.n_sets),
                     "DU": split_view_sets(catalog, unseen, conf.n_sets),
                     "VAL": split_view_sets(catalog, val, conf.n_sets)}
    # other datasets evaluated whole as unseen objects: their own catalogs and images
    cross = {}
    for name in conf.cross_data:
        croot = resolve_data(name)
        ccat = read_view_catalog(croot)
        ccat = thinned(ccat, first(ccat.objects()))
        cimages = mm.decoded_array(ccat.paths, cache / f"images-{croot.name}.npy", what=f"{croot.name} images")
        if cimages.shape[1:] != images.shape[1:]:
            cimages = mm.decoded_array(ccat.paths, cache / f"images-{croot.name}-{images.shape[1]}.npy",
                                       images.shape[1], what=f"{croot.name} images")
        cross[f"{croot.name} (unseen)"] = (ccat, cimages, split_view_sets(ccat, None, conf.n_sets))
    train_rows = catalog.rows_of(train)
    set_code = np.full(len(catalog), -1, dtype=np.int64)
    for code, s in enumerate(s for sets in sets_by_split.values() for s in sets):
        set_code[s.views] = code
    train_images, train_labels, train_sets = images[train_rows], catalog.object_ids[train_rows], set_code[train_rows]
    print(f"{title}: {len(catalog)} images ({catalog.geometry} geometry); DS {len(train)} objects, VAL "
          f"{len(val)} (held-out seen), DU {len(unseen)}; cross: {list(cross)}")

    # -- teacher
    names = [p.name for p in catalog.paths]
    teacher = teacher_model = None
    if conf.teacher_embeddings:
        teacher_emb, emb_config = mm.external_teacher_embeddings(resolve_data(conf.teacher_embeddings), names)
        cross_emb = {c: mm.external_teacher_embeddings(resolve_data(conf.teacher_embeddings),
                                                       [p.name for p in ccat.paths])[0]
                     for c, (ccat, _, _) in cross.items()}
    else:
        over = {"name": "mv-teacher", "loop.epochs": conf.teacher_epochs, "image_size": conf.image_size,
                "loop.seed": conf.seed, "loop.device": "cpu"}
        if conf.max_steps_per_epoch:
            over.update({"P": 4, "K": 4, "loop.max_steps_per_epoch": conf.max_steps_per_epoch})
        tcfg = TRAIN_CONFIGS.get("coil-e3", over)
        with timer("train teacher"):
            teacher_path = train_siamese(tcfg, [catalog.paths[i] for i in train_rows],
                                         [str(o) for o in train_labels], cache / "teacher")
        teacher_model = load_trained_efficientnet(teacher_path)
        teacher = mm.Teacher(teacher_model, conf.image_size)
        tconf = read_trained_config(teacher_path)
        emb_config = {"teacher": {k: tconf.get(k) for k in ("train_config", "data", "init")},
                      "image_size": conf.image_size}
        with timer("teacher embeddings"):
            teacher_emb = compute_teacher_embeddings(teacher, images, names, cache / "teacher_embeddings.h5",
                                                     emb_config, batch_size=128)
            cross_emb = {c: compute_teacher_embeddings(teacher, cimg, [p.name for p in ccat.paths],
                                                       cache / f"teacher_embeddings-{ccat.root.name}.h5",
                                                       emb_config, batch_size=128)
                         for c, (ccat, cimg, _) in cross.items()}

    # -- MV-AlexNet, then the distillation candidates
    scfg = mm.student_config(conf, "mv-alexnet", conf.student_epochs, 1e-3)
    with timer("train mv-alexnet"):
        student_path, _ = train_mv_alexnet(train_images, train_labels, train_sets, cache / "mv_alexnet", scfg)
    max_epochs = max(conf.distill_epochs)
    dcfg = mm.student_config(conf, "mv-alexnet-distilled", max_epochs, conf.distill_lr, conf.distill_views)
    transfer = None
    if conf.transfer:
        if teacher is None:
            raise SystemExit("a transfer set needs the built-in teacher network (not teacher_embeddings)")
        transfer = TransferSet(mm.load_transfer_images(data_root(), conf.transfer, cache), teacher.on_views,
                               batch_size=conf.transfer_batch, augment=mm.transfer_augment(dcfg.augment),
                               name="+".join(conf.transfer))
    candidates: Dict[str, Path] = {}
    for weight in conf.distill_weights:
        dist = DistillConfig(relation="kl", relation_weight=weight, temperature=conf.temperature,
                             feature_weight=conf.feature_weight, feature_kind="cosine",
                             metric_weight=conf.metric_weight, metric_loss="triplet", metric_margin=0.2,
                             center_teacher=conf.center_teacher)
        setting = {"distill": dist.to_dict(), "train": dcfg.to_dict(), "external": teacher is None,
                   "transfer": transfer.describe() if transfer is not None else None}
        digest = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:10]
        run_dir = cache / f"mv_alexnet_distilled-{digest}"
        with timer(f"distill x{weight:g}"):
            distill_mv_alexnet(student_path, train_images, train_labels, train_sets, teacher_emb[train_rows],
                               run_dir, dcfg, dist, teacher_view_pooling="mean", teacher_info=emb_config,
                               transfer=transfer, snapshot_epochs=sorted(set(conf.distill_epochs)))
        for e in sorted(set(conf.distill_epochs)):
            candidates[mm.candidate_name(weight, e)] = mm.snapshot_of(run_dir, e, max_epochs)
    with timer("validation"):
        chosen, validation = mm.choose_student(candidates, student_path, images, conf.image_size,
                                               sets_by_split["VAL"], conf.validation_views, conf.seed)
    best_distilled = max(candidates, key=lambda c: validation["means"][c])
    kept = chosen != mm.NO_DISTILLATION
    delivered = "mv-alexnet-distilled" if kept else "mv-alexnet"
    students = {"mv-alexnet": student_path, f"distilled ({best_distilled})": candidates[best_distilled]}
    if kept:
        students[f"distilled ({chosen})"] = candidates[chosen]
    print(f"validation on held-out seen objects: {validation['means']} -> "
          f"{'distillation kept: ' + chosen if kept else 'distillation refused: the undistilled student is delivered'}")

    # -- evaluation (DS / DU / VAL on the main set, every cross set)
    db_views = [None] + [m for m in conf.db_views]
    rows: List[dict] = []
    curves: Dict[str, dict] = {}
    with timer("evaluate"):
        rows += mv_eval.evaluate_sets("teacher", lambda v: pool_view_embeddings(teacher_emb, v, "mean"),
                                      sets_by_split, conf.test_views, conf.seed, db_views, curves)
        for c, (_, _, csets) in cross.items():
            rows += mv_eval.evaluate_sets("teacher", lambda v, e=cross_emb[c]: pool_view_embeddings(e, v, "mean"),
                                          {c: csets}, conf.test_views, conf.seed, db_views, curves)
        for name, path in students.items():
            model = load_mv_alexnet(path)[0]
            rows += mv_eval.evaluate_sets(name, mm.set_descriptors(model, images, conf.image_size),
                                          sets_by_split, conf.test_views, conf.seed, db_views, curves)
            for c, (_, cimg, csets) in cross.items():
                rows += mv_eval.evaluate_sets(name, mm.set_descriptors(model, cimg, conf.image_size),
                                              {c: csets}, conf.test_views, conf.seed, db_views, curves)
    if kept:  # the delivered student is the chosen distilled one: its rows under its own name too
        rows += [dict(r, model="mv-alexnet-distilled") for r in rows if r["model"] == f"distilled ({chosen})"]

    # -- size and speed (same process, same batches: the ratios are what to read)
    speed_images = images[: conf.speed_images]
    info = {"teacher": {"params": float("nan"), "img_per_s": float("nan")}}
    with timer("speed"):
        if teacher_model is not None:
            fc = getattr(teacher_model.net, "_fc", None)  # the ImageNet classifier is not the descriptor's
            info["teacher"] = {"params": count_parameters(teacher_model) - (count_parameters(fc) if fc else 0),
                               "img_per_s": mm.throughput(teacher, speed_images)}
        for name, path in students.items():
            model = load_mv_alexnet(path)[0]

            def run(batch, m=model):
                with torch.inference_mode():
                    return m(mm.to_input(batch, conf.image_size, "alexnet").unsqueeze(1))
            info[name] = {"params": count_parameters(model), "img_per_s": mm.throughput(run, speed_images)}
    info["mv-alexnet-distilled"] = info.get(f"distilled ({chosen})", {})
    for r in rows:
        r.update(info.get(r["model"], {}))

    # -- report
    splits = list(dict.fromkeys(r["split"] for r in rows))
    target = mv_eval.distillation_summary(rows, splits, conf.validation_views, delivered)
    decision = (f"distillation kept: validation on held-out seen objects chose {chosen!r}" if kept else
                "distillation refused: on held-out seen objects no distilled candidate beat the undistilled "
                "MV-AlexNet, so the delivered student is the undistilled one")
    summary = {"decision": decision, "delivered": delivered, "validation": validation,
               "validation_objects": list(val), "target": target,
               "all_targets_met": all(t["target_met"] for t in target.values()),
               "seconds": dict(timer.seconds), "peak_rss_mb": peak_rss_mb()}
    columns = ["model", "split", "test_views", "db_views", "top1", "top10", "mAP@100", "nDCG@100", "ANMRR",
               "params", "img_per_s"]
    table = write_results(rows, out_dir, columns=columns, title=f"{title} multi-view retrieval",
                          extra={"summary": summary, "config": conf.to_dict(), "convention": mv_eval.CONVENTION,
                                 "protocol": {"n_sets": conf.n_sets, "queries": "every set (leave-one-set-out)",
                                              "geometry": catalog.geometry}})
    headline = [r for r in rows if r["test_views"] in conf.validation_views and r["db_views"] == "all"]
    sweep = [{"model": m, "split": sp, **{f"k={r['test_views']}, db={r['db_views']}": r["mAP@100"]
                                            for r in rows if r["model"] == m and r["split"] == sp}}
             for m in dict.fromkeys(r["model"] for r in rows) for sp in splits]
    plot = mv_eval.plot_sweep(rows, out_dir / "map_vs_views.png", title,
                              skip=[f"distilled ({chosen})"] if kept else [])
    from retrieval.bench.pr_plot import plot_pr_curves

    k0 = min(conf.test_views)
    shown = {(key.replace(f"distilled ({chosen})", "mv-alexnet-distilled") if kept else key): c
             for key, c in curves.items() if key.endswith(f", k={k0}") and (", DU," in key or "(unseen)" in key)}
    plot_pr_curves(shown, out_dir / "pr_curve.png", f"{title}: unseen splits, k={k0}")
    target_rows = [{"split": k, **v} for k, v in target.items()]
    text = [f"# {title} multi-view retrieval", "", f"Metric convention: {mv_eval.CONVENTION}.", "",
            f"**{decision}.** Validation mAP@100 on {len(val)} held-out seen objects (k = "
            f"{list(conf.validation_views)}): " + ", ".join(f"{k} {v:.4f}" for k, v in validation["means"].items()),
            "", "## Delivered student against the undistilled MV-AlexNet (mAP@100)", "",
            markdown_table(target_rows), "",
            f"## test_views {list(conf.validation_views)}", "", markdown_table(headline, columns), "",
            "## mAP@100 against test_views and database views per set", "", markdown_table(sweep), "",
            "## Summary", "", "```", json.dumps(summary, indent=1, default=str), "```", "",
            "## All rows", "", table, ""]
    atomic_write_text(out_dir / "results.md", "\n".join(text))
    print("\n".join(text[:12]))
    print(f"results: {out_dir / 'results.json'}, {out_dir / 'results.md'}, {plot}")
    return out_dir


#: ``retrieval run multiview --quick``: the same path on a few objects and steps (CI, smoke runs)
QUICK = {"max_objects": 10, "max_steps_per_epoch": 3, "batch_p": 4, "distill_epochs": [1, 2],
         "test_views": [1, 3], "db_views": [3], "speed_images": 64}
