"""Relation distillation losses, the teacher-embedding cache and the distillation training run."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from retrieval.features.alexnet import AlexNetConfig
from retrieval.features.store import FeatureFileError
from retrieval.training.distill import (DistillConfig, DistillationLoss, TransferSet, center_embeddings,
                                        compute_teacher_embeddings, distill_mv_alexnet, feature_matching_loss,
                                        pool_teacher_views,
                                        rkd_angle_loss, rkd_distance_loss, similarity_kl_loss)
from retrieval.training.augment import AugmentConfig
from retrieval.training.loop import LoopConfig
from retrieval.training.multiview import (MultiViewTrainConfig, ViewSetSampler, load_mv_alexnet,
                                          train_mv_alexnet)

RELATIONS = [similarity_kl_loss, rkd_distance_loss, rkd_angle_loss]


def _emb(b, d, seed):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("loss", RELATIONS)
def test_relation_zero_for_teacher_up_to_scale_positive_otherwise(loss):
    t = _emb(12, 16, 0)
    assert float(loss(3.5 * t, t)) < 1e-6
    assert float(loss(t, 0.2 * t)) < 1e-6
    assert float(loss(_emb(12, 16, 1), t)) > 1e-3


@pytest.mark.parametrize("loss", RELATIONS)
def test_relation_gradients_reach_student_not_teacher(loss):
    s = _emb(10, 8, 2).requires_grad_(True)
    t = _emb(10, 32, 3).requires_grad_(True)  # other dimension: only relations are compared
    loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_relation_descent_moves_student_structure_to_teacher():
    t = _emb(16, 32, 4)
    s = _emb(16, 8, 5).requires_grad_(True)
    opt = torch.optim.SGD([s], lr=0.5)
    first = float(similarity_kl_loss(s, t).detach())
    for _ in range(50):
        opt.zero_grad()
        similarity_kl_loss(s, t).backward()
        opt.step()
    assert float(similarity_kl_loss(s, t)) < 0.5 * first


def test_kl_temperature_and_input_checks():
    t = _emb(6, 4, 6)
    s = _emb(6, 4, 7)
    assert float(similarity_kl_loss(s, t, temperature=0.05)) != float(similarity_kl_loss(s, t, 0.5))
    with pytest.raises(ValueError, match="global token"):
        similarity_kl_loss(torch.zeros(6, 5, 4), t)  # token sequences must be reduced first
    with pytest.raises(ValueError, match="batch"):
        similarity_kl_loss(s[:5], t)
    with pytest.raises(ValueError, match="temperatures"):
        similarity_kl_loss(s, t, temperature=0)


def test_feature_matching_pulls_student_towards_teacher():
    t = _emb(8, 16, 8)
    far = _emb(8, 16, 9)
    losses = [float(feature_matching_loss((1 - a) * far + a * t, t)) for a in (0.0, 0.5, 0.9, 1.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 1e-6 and losses[0] > 0.1
    for kind in ("cosine", "mse"):
        assert float(feature_matching_loss(t, t, kind)) < 1e-6
        assert float(feature_matching_loss(-t, t, kind)) > 1.9  # opposite: the largest loss
    # one gradient step on the student lowers the loss and raises its cosine to the teacher
    s = far.clone().requires_grad_(True)
    feature_matching_loss(s, t).backward()
    stepped = (s - 0.5 * s.grad).detach()
    cos = lambda a: torch.nn.functional.cosine_similarity(a, t).mean()
    assert cos(stepped) > cos(far)
    with pytest.raises(ValueError, match="shape"):
        feature_matching_loss(_emb(8, 4, 0), t)


def test_distillation_loss_parts_projection_and_sign():
    cfg = DistillConfig(relation="kl", feature_weight=1.0, metric_weight=0.5)
    crit = DistillationLoss(cfg, student_dim=8, teacher_dim=16)
    assert sum(p.numel() for p in crit.parameters()) == 8 * 16  # the projection trains with the student
    s = _emb(8, 8, 10).requires_grad_(True)
    t = _emb(8, 16, 11)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    total, parts = crit(s, t, labels)
    assert set(parts) == {"relation_kl", "feature", "metric"}
    assert abs(float(total) - sum(parts.values())) < 1e-5
    # training the projection + student on the feature term alone brings P s to t (alignment, not repulsion)
    only_feature = DistillationLoss(DistillConfig(relation="none", feature_weight=1.0), 8, 16)
    opt = torch.optim.Adam([s, *only_feature.parameters()], lr=0.05)
    start = float(only_feature(s, t)[0])
    for _ in range(100):
        opt.zero_grad()
        only_feature(s, t)[0].backward()
        opt.step()
    assert float(only_feature(s, t)[0]) < 0.3 * start
    with pytest.raises(ValueError, match="labels"):
        crit(s, t)
    with pytest.raises(ValueError, match="weight 0"):
        DistillationLoss(DistillConfig(relation="none"), 8, 16)(s, t)
    rkd = DistillationLoss(DistillConfig(relation="rkd"), 8, 16)
    assert set(rkd(s, t)[1]) == {"rkd_distance", "rkd_angle"}
    with pytest.raises(ValueError, match="relation"):
        DistillConfig(relation="attention")


def test_pool_teacher_views():
    t = torch.nn.functional.normalize(_emb(6, 4, 12), dim=1)
    one = pool_teacher_views(t, np.array([[2], [5]]))
    assert torch.equal(one, t[[2, 5]])
    two = pool_teacher_views(t, np.array([[0, 1]]))
    want = torch.nn.functional.normalize((t[0] + t[1]).unsqueeze(0), dim=1)
    assert torch.allclose(two, want, atol=1e-6)


def test_centring_removes_the_common_direction_and_keeps_the_ranking_signal():
    """Positive-orthant embeddings (as GeM of ReLU maps gives) have nearly flat similarity rows;
    centred, they are unit rows again whose similarities spread around 0."""
    rng = np.random.default_rng(3)
    common = np.abs(rng.normal(size=16)) * 3
    raw = common + np.abs(rng.normal(size=(40, 16)))
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    off = ~np.eye(40, dtype=bool)
    assert (raw @ raw.T)[off].mean() > 0.8
    c = center_embeddings(raw)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    assert abs(float((c @ c.T)[off].mean())) < 0.1 and float((c @ c.T)[off].std()) > 0.15
    assert DistillConfig().center_teacher
    with pytest.raises(ValueError, match="centring"):
        center_embeddings(raw[:1])


def _colour_teacher(calls):
    def embed(images):
        calls.append(len(images))
        x = images.reshape(len(images), -1, 3).mean(1).astype(np.float32) + 1
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return embed


def test_teacher_embedding_cache_resume_and_config(tmp_path, rng):
    images = rng.integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)
    ids = [f"im{i}" for i in range(10)]
    calls = []
    path = tmp_path / "teacher.h5"
    want = _colour_teacher([])(images)
    # interrupted after 2 batches of 4: the file holds 8 rows; the rerun embeds only the rest
    compute_teacher_embeddings(_colour_teacher(calls), images[:8], ids[:8], path, {"t": 1}, batch_size=4,
                               progress=False)
    calls.clear()
    got = compute_teacher_embeddings(_colour_teacher(calls), images, ids, path, {"t": 1}, batch_size=4,
                                     progress=False)
    assert np.allclose(got, want, atol=1e-6)
    assert sum(calls) <= 4 + 2  # the first batch (for the dimension) + the 2 missing images
    calls.clear()
    again = compute_teacher_embeddings(_colour_teacher(calls), images, ids, path, {"t": 1}, progress=False)
    assert calls == [] and np.array_equal(again, got)
    with pytest.raises(FeatureFileError, match="configuration"):
        compute_teacher_embeddings(_colour_teacher([]), images, ids, path, {"t": 2}, progress=False)
    with pytest.raises(FeatureFileError, match="other images"):
        compute_teacher_embeddings(_colour_teacher([]), images[::-1].copy(), ids[::-1], path, {"t": 1},
                                   progress=False)
    with pytest.raises(ValueError, match="global token"):
        compute_teacher_embeddings(lambda ims: np.zeros((len(ims), 3, 4)), images, ids, progress=False)


def _toy_views(n_objects=4, per_object=8, size=40, seed=0):
    """Each object a distinct colour blob, views shifted a little: (N, size, size, 3) uint8."""
    g = np.random.default_rng(seed)
    images, labels, sets = [], [], []
    for o in range(n_objects):
        colour = g.integers(60, 255, 3)
        for v in range(per_object):
            im = np.zeros((size, size, 3), np.uint8)
            y, x = 8 + v % 4, 8 + (v * 3) % 12
            im[y:y + 18, x:x + 14] = colour
            images.append(im)
            labels.append(o + 1)
            sets.append(o * 2 + v // (per_object // 2))
    return np.stack(images), np.asarray(labels), np.asarray(sets)


def _tiny_cfg(name, epochs=1, seed=0):
    return MultiViewTrainConfig(
        name=name, model=AlexNetConfig(widths=(8, 16, 16, 16, 16), out_dim=16), image_size=40, P=2, K=2,
        views=(1, 2), loop=LoopConfig(epochs=epochs, lr=1e-3, seed=seed, device="cpu", max_steps_per_epoch=2,
                                      prefetch=1))


def test_view_set_sampler_batches():
    _, labels, sets = _toy_views()
    sampler = ViewSetSampler(labels, sets, P=2, K=2, views=(3,), seed=1)
    batches = sampler.batches(0)
    assert batches and all(b.shape == (4, 3) for b in batches)
    for b in batches:
        for row in b:  # every view of a row is from the anchor's own view set
            assert len(set(sets[row].tolist())) == 1
        assert labels[b[0, 0]] == labels[b[1, 0]] and labels[b[0, 0]] != labels[b[2, 0]]
    assert all(np.array_equal(a, b) for a, b in zip(batches, sampler.batches(0)))


def test_train_then_distill_tiny(tmp_path):
    images, labels, sets = _toy_views()
    student_path, result = train_mv_alexnet(images, labels, sets, tmp_path / "mv", _tiny_cfg("mv"), progress=False)
    assert student_path.is_file() and result.steps == 2 and (tmp_path / "mv" / "losses.png").is_file()
    init, cfg = load_mv_alexnet(student_path)
    assert cfg["architecture"] == "MVAlexNet" and cfg["image_size"] == 40
    teacher = torch.nn.functional.normalize(torch.randn(len(images), 12), dim=1).numpy()
    dist = DistillConfig(feature_weight=1.0, metric_weight=0.5)
    # interrupted after one step, then resumed to the end
    path, _ = distill_mv_alexnet(student_path, images, labels, sets, teacher, tmp_path / "d",
                                 _tiny_cfg("d", epochs=2), dist, stop_after_steps=1, progress=False)
    assert path is None
    path, res = distill_mv_alexnet(student_path, images, labels, sets, teacher, tmp_path / "d",
                                   _tiny_cfg("d", epochs=2), dist, progress=False)
    assert res.resumed_from_step == 1 and res.steps == 4
    distilled, dcfg = load_mv_alexnet(path)
    x = torch.randn(2, 1, 3, 40, 40)
    with torch.no_grad():
        assert not torch.allclose(distilled(x), init(x))  # it trained, starting from the init
    assert dcfg["distill"]["init"]["path"].endswith("model.pt")
    with pytest.raises(ValueError, match="architecture"):
        other = replace(_tiny_cfg("d2"), model=AlexNetConfig(widths=(8, 16, 16, 16, 8), out_dim=16))
        distill_mv_alexnet(student_path, images, labels, sets, teacher, tmp_path / "d2", other, dist,
                           progress=False)
    with pytest.raises(ValueError, match="L2-normalised"):
        distill_mv_alexnet(student_path, images, labels, sets, teacher * 3, tmp_path / "d3", _tiny_cfg("d3"),
                           dist, progress=False)


def _trained_toy_student(tmp_path):
    """Toy views, an MV-AlexNet trained on them (its model file) and random unit "cached teacher"
    embeddings: (images, labels, sets, student_path, cached)."""
    images, labels, sets = _toy_views()
    student_path, _ = train_mv_alexnet(images, labels, sets, tmp_path / "mv", _tiny_cfg("mv"), progress=False)
    cached = torch.nn.functional.normalize(torch.randn(len(images), 12), dim=1).numpy()
    return images, labels, sets, student_path, cached


def _recording_teacher(dim=12):
    """A teacher callable on float views (n, 3, S, S) that records every batch it is shown."""
    proj = torch.randn(3, dim, generator=torch.Generator().manual_seed(0))
    seen = []

    def teacher(views):
        seen.append(views.detach().clone())
        return torch.nn.functional.normalize(views.mean(dim=(2, 3)) @ proj, dim=1)

    return teacher, seen


def test_consistent_teaching_sees_the_students_augmented_views(tmp_path):
    """With ``teacher_model`` the teacher runs on the very views the student is given (augmented,
    float in [0, 1]) in every step; the cached embeddings then only supply the centring mean."""
    images, labels, sets, student_path, cached = _trained_toy_student(tmp_path)
    teacher, seen = _recording_teacher()

    path, res = distill_mv_alexnet(student_path, images, labels, sets, cached, tmp_path / "c", _tiny_cfg("c"),
                                   DistillConfig(metric_weight=0.5), progress=False, teacher_model=teacher)
    assert path.is_file() and len(seen) == res.steps >= 1
    for views in seen:
        assert views.ndim == 4 and views.shape[1:] == (3, 40, 40)
        assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    _, dcfg = load_mv_alexnet(path)
    assert dcfg["distill"]["teacher_on_augmented_views"] is True


def test_mixup_distillation_teacher_sees_the_mixed_views(tmp_path):
    """With mixup the student and the teacher get the same blended sets; the labelled metric loss
    and cached (unmixed) teacher embeddings are refused."""
    images, labels, sets, student_path, cached = _trained_toy_student(tmp_path)
    teacher, seen = _recording_teacher()

    cfg = replace(_tiny_cfg("m"), augment=AugmentConfig(out_size=40, scale=(1, 1), ratio=(1, 1), hflip_prob=0,
                                                        rotation_deg=0, brightness=0, contrast=0, saturation=0,
                                                        hue=0))  # identity
    path, _ = distill_mv_alexnet(student_path, images, labels, sets, cached, tmp_path / "m", cfg,
                                 DistillConfig(mixup_alpha=1.0), progress=False, teacher_model=teacher)
    assert path.is_file() and seen
    originals = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).flatten(1)
    blended = 0
    for view in torch.cat(seen).flatten(1):
        # every view the teacher saw is lam * a + (1 - lam) * b for two training images a, b
        best = float("inf")
        for a in range(len(originals)):
            for b in range(len(originals)):
                d = originals[a] - originals[b]
                lam = float((view - originals[b]) @ d / (d @ d)) if float(d @ d) > 0 else 1.0
                lam = min(max(lam, 0.0), 1.0)
                best = min(best, float((lam * originals[a] + (1 - lam) * originals[b] - view).abs().max()))
        assert best < 1e-4
        blended += int(min(float((view - o).abs().max()) for o in originals) > 1e-3)
    assert blended > 0  # and some are not training images
    with pytest.raises(ValueError, match="metric"):
        DistillConfig(mixup_alpha=1.0, metric_weight=0.5)
    with pytest.raises(ValueError, match="teacher_model"):
        distill_mv_alexnet(student_path, images, labels, sets, cached, tmp_path / "m2", _tiny_cfg("m2"),
                           DistillConfig(mixup_alpha=1.0), progress=False)


def test_transfer_set_is_distilled_without_labels(tmp_path):
    """Unlabelled transfer images: every step draws ``batch_size`` of them, the teacher sees the
    same crops as the student, the metric term is left out for them, and the run records the set."""
    images, labels, sets, student_path, cached = _trained_toy_student(tmp_path)
    teacher, seen = _recording_teacher()

    g = np.random.default_rng(3)
    extra = g.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    transfer = TransferSet(extra, teacher, batch_size=5, weight=0.5)
    path, res = distill_mv_alexnet(student_path, images, labels, sets, cached, tmp_path / "t", _tiny_cfg("t"),
                                   DistillConfig(metric_weight=0.5), progress=False, transfer=transfer)
    assert path.is_file() and len(seen) == res.steps >= 1
    for views in seen:  # crops resized to the training size, in [0, 1]
        assert views.shape == (5, 3, 40, 40)
        assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    _, dcfg = load_mv_alexnet(path)
    assert dcfg["distill"]["transfer"]["n_images"] == 10 and dcfg["distill"]["transfer"]["weight"] == 0.5

    loss = DistillationLoss(DistillConfig(metric_weight=1.0), 12, 12)
    s_emb, t_emb = _emb(6, 12, 0), _emb(6, 12, 1)
    with_metric, parts = loss(s_emb, t_emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    without, parts_unlabelled = loss(s_emb, t_emb, labelled=False)
    assert "metric" in parts and "metric" not in parts_unlabelled
    assert float(with_metric) == pytest.approx(float(without) + parts["metric"], abs=1e-5)

    with pytest.raises(ValueError, match="unlabelled"):
        distill_mv_alexnet(student_path, images, labels, sets, cached, tmp_path / "t2", _tiny_cfg("t2"),
                           DistillConfig(relation="none", metric_weight=1.0), progress=False, transfer=transfer)
    with pytest.raises(ValueError, match="uint8"):
        TransferSet(extra.astype(np.float32), teacher)
    with pytest.raises(ValueError, match="M >= 2"):
        TransferSet(extra[:, :, :, :1], teacher)
    with pytest.raises(ValueError, match="batch_size"):
        TransferSet(extra, teacher, batch_size=1)
