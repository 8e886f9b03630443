"""The ladder's estimate and ETA (retrieval.experiments.ladder.eta), driven through a real StageTimer."""
from retrieval.experiments.ladder.eta import TYPICAL_SECONDS, LadderEta, expected_stages, format_duration
from retrieval.core.report import StageTimer


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_expected_stages_follow_the_halves_and_rerankers():
    full = expected_stages(True, True, ["E5", "E6", "E7", "SV", "E8"], False, {})
    assert full == {k: float(v) for k, v in TYPICAL_SECONDS.items()}
    landmark_only = expected_stages(False, True, ["SV"], False, {})
    assert "train E2" not in landmark_only and "landmark extract E1" in landmark_only
    assert "landmark score SV" in landmark_only and "landmark score E5" not in landmark_only
    assert "landmark patches" not in landmark_only and "landmark vlad codebook" not in landmark_only
    assert "landmark sift rootsift-1k" in landmark_only          # SV reads RootSIFT
    # this cache's own seconds win over the typical table, and its extra stages count
    measured = expected_stages(True, False, ["E5"], False, {"train E2": 919.0, "sift rootsift-1k": 40.0})
    assert measured["train E2"] == 919.0 and measured["sift rootsift-1k"] == 40.0
    assert "landmark extract E1" not in measured


def test_eta_scales_what_is_left_by_the_measured_speed_and_drops_cached_stages(tmp_path):
    clock, lines = Clock(), []
    expected = {"data": 2.0, "train E2": 60.0, "extract E1": 10.0, "score E5": 20.0}
    eta = LadderEta(expected, say=lines.append, clock=clock)
    assert "about 92 s (training E2-E4: 60 s)" in eta.start_line({}) and "typical" in eta.start_line({})
    timer = StageTimer(tmp_path / "timings.json")
    timer.listeners.append(eta.stage_done)

    timer.add("data", 2.0, computed=False)          # found in the cache: costs nothing, no line
    assert lines == [] and eta.remaining() == 90.0
    clock.now += 180
    timer.add("train E2", 180.0)                    # 3x slower than expected: the rest is scaled
    assert eta.speed() == 3.0
    assert eta.remaining() == 90.0                  # (10 + 20) * 3
    assert lines[-1].startswith("train E2: 3 min (expected 60 s); about 90 s left, ETA ")
    timer.add("extract E1", 0.5, computed=False)
    assert eta.remaining() == 60.0
    # a stage's stored seconds replayed without work (more than the time elapsed): cached, not speed
    timer.add("score E5", 10_000.0)
    assert eta.speed() == 3.0 and eta.remaining() == 0.0 and len(lines) == 1


def test_format_duration():
    assert format_duration(42) == "42 s"
    assert format_duration(61 * 60) == "61 min"
    assert format_duration(3 * 3600 + 5 * 60) == "3 h 05 min"
