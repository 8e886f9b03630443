"""An estimate of what a ladder run costs and an ETA as its stages finish.

The expected seconds of each stage come from the cache's own ``timings.json`` (what the stage cost
when this cache last computed it, on this machine) and, for stages it has never computed, from
:data:`TYPICAL_SECONDS` (the default data, a cold run on a quiet 2-core machine). As stages finish,
the ratio of their actual to their expected seconds (the machine's speed and load, the size of the
data) scales what is left, so the ETA corrects itself. A stage found complete in the cache costs
nothing and drops out of what is left.

``python -m retrieval.experiments.ladder.eta results/e1_e7/results.json`` prints a run's stage seconds as a
table to paste into :data:`TYPICAL_SECONDS` (or :data:`TYPICAL_QUICK_SECONDS` for a quick run).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, Dict, Iterable, Mapping, Optional, Set

__all__ = ["TYPICAL_SECONDS", "TYPICAL_QUICK_SECONDS", "expected_stages", "LadderEta", "format_duration"]

# A cold `make bench` of this version on the quiet 2-core machine (int8 extraction, bfloat16 training; 9 min 26 s
# wall, the ladder 550 s; README). A cold run on a quiet machine refreshes them: `python -m
# retrieval.experiments.ladder.eta results/e1_e7/results.json` prints the table to paste (and for a quick run's).
TYPICAL_SECONDS: Dict[str, float] = {
    "data": 3, "train E2": 86, "train E3": 86, "train E4": 59, "extract E1": 6, "search E1": 1, "extract E2": 6,
    "search E2": 1, "extract E3": 6, "search E3": 1, "extract E4": 6, "search E4": 1, "sift rootsift-small": 24,
    "read sift": 3, "score E5": 12, "choose E5": 1, "vlad codebook": 7, "score E6": 5, "choose E6": 1, "patches": 19,
    "read patches": 1, "score E7": 12, "choose E7": 1, "read sift rootsift-small": 1, "score SV": 28, "choose SV": 1,
    "choose E8 alpha-QE": 2, "choose E8 DBA": 4, "choose E8 DBA+alpha-QE": 5, "landmark extract E1": 45,
    "landmark search E1": 1, "landmark sift rootsift-1k": 16, "landmark read sift": 1, "landmark score E5": 4,
    "landmark choose E5": 1, "landmark vlad codebook": 1, "landmark score E6": 3, "landmark choose E6": 1,
    "landmark patches": 13, "landmark read patches": 1, "landmark score E7": 7, "landmark choose E7": 1,
    "landmark sift rootsift-upright-c02-4k": 26, "landmark read sift rootsift-upright-c02-4k": 1,
    "landmark score SV": 12, "landmark choose SV": 1, "landmark choose E8 alpha-QE": 1, "landmark choose E8 DBA": 1,
    "landmark choose E8 DBA+alpha-QE": 1,
}
# the quick subset (objects 1-8 / 51-58, a few training steps, a small Oxford subset): rough guesses
TYPICAL_QUICK_SECONDS: Dict[str, float] = {
    "data": 2, "train E2": 15, "train E3": 15, "train E4": 15,
    **{f"{s} E{i}": 2 for s in ("extract", "search") for i in (1, 2, 3, 4)},
    "sift rootsift-small": 5, "read sift": 1, "score E5": 3, "vlad codebook": 5, "score E6": 1,
    "patches": 8, "read patches": 1, "score E7": 2, "read sift rootsift-small": 1, "score SV": 5,
    "landmark extract E1": 20, "landmark sift rootsift-1k": 5, "landmark patches": 10,
    "landmark sift rootsift-upright-c02-4k": 8, "landmark score SV": 5,
}

# the re-ranker each stage belongs to (a stage serves every re-ranker named; others: always run)
_STAGE_RUNGS = {"sift": ("E5", "E6", "SV", "ASMK"), "read sift": ("E5", "E6", "SV", "ASMK"), "vlad codebook": ("E6",),
                "asmk codebook": ("ASMK",),
                "patches": ("E7",), "read patches": ("E7",)}


def _rungs_of(stage: str) -> Optional[Iterable[str]]:
    bare = stage[len("landmark "):] if stage.startswith("landmark ") else stage
    for verb in ("score ", "choose "):
        if bare.startswith(verb):
            return (bare[len(verb):].split(" ", 1)[0],)
    for prefix, rungs in _STAGE_RUNGS.items():
        if bare == prefix or bare.startswith(prefix + " "):
            return rungs
    return None


def expected_stages(object_half: bool, landmark_half: bool, rerankers: Iterable[str], quick: bool,
                    measured: Mapping[str, float]) -> Dict[str, float]:
    """Expected seconds per stage of a run: this cache's ``measured`` seconds where it has them, else
    the typical table's, for the halves and re-rankers the run has."""
    typical = TYPICAL_QUICK_SECONDS if quick else TYPICAL_SECONDS
    wanted = set(rerankers)
    out: Dict[str, float] = {}
    for stage in dict.fromkeys([*typical, *measured]):
        landmark = stage.startswith("landmark ")
        if (landmark and not landmark_half) or (not landmark and stage != "data" and not object_half):
            continue
        rungs = _rungs_of(stage)
        if rungs is not None and not wanted.intersection(rungs):
            continue
        out[stage] = float(measured.get(stage, typical.get(stage, 0.0)))
    return out


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes // 60:.0f} h {minutes % 60:02.0f} min"


class LadderEta:
    """Listens to a :class:`retrieval.core.report.StageTimer` (``timer.listeners.append(eta.stage_done)``)
    and prints what is left after each stage that took a while."""

    def __init__(self, expected: Mapping[str, float], say: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.time, min_stage_seconds: float = 2.0):
        self.expected = dict(expected)
        self.say, self.clock, self.min_stage_seconds = say, clock, min_stage_seconds
        self.started = clock()
        self.spent: Dict[str, float] = {}
        self.cached: Set[str] = set()

    def speed(self) -> float:
        """Actual / expected seconds of the stages computed so far (1 until one of 5 s or more ran),
        kept in [0.25, 20]."""
        done = [s for s in self.spent if self.expected.get(s, 0.0) >= 5.0]
        if not done:
            return 1.0
        ratio = sum(self.spent[s] for s in done) / sum(self.expected[s] for s in done)
        return min(20.0, max(0.25, ratio))

    def remaining(self) -> float:
        speed = self.speed()
        left = 0.0
        for stage, seconds in self.expected.items():
            if stage in self.cached and stage not in self.spent:
                continue
            left += max(0.0, seconds * speed - self.spent.get(stage, 0.0))
        return left

    def start_line(self, measured: Mapping[str, float]) -> str:
        total = sum(self.expected.values())
        train = sum(v for k, v in self.expected.items() if k.startswith("train "))
        own = sum(1 for s in self.expected if s in measured)
        source = ("this cache's timings.json" if own == len(self.expected) else
                  "typical seconds on a quiet 2-core machine" if own == 0 else
                  f"this cache's timings.json for {own} of {len(self.expected)} stages, typical seconds for the rest")
        training = f" (training E2-E4: {format_duration(train)})" if train else ""
        return (f"estimate for a cold run: about {format_duration(total)}{training}, from {source}; a resumed run "
                f"skips what the cache holds; ETA {self._clock_text(total)}")

    def stage_done(self, stage: str, seconds: float, computed: bool) -> None:
        # a stage's stored seconds replayed from the cache (a trained model found) took no time now
        if not computed or seconds > self.clock() - self.started + 1.0:
            self.cached.add(stage)
            return
        self.spent[stage] = self.spent.get(stage, 0.0) + seconds
        if seconds >= self.min_stage_seconds:
            left = self.remaining()
            self.say(f"{stage}: {format_duration(seconds)} (expected {format_duration(self.expected.get(stage, 0))}); "
                     f"about {format_duration(left)} left, ETA {self._clock_text(left)}")

    def _clock_text(self, left: float) -> str:
        return time.strftime("%H:%M", time.localtime(self.clock() + left))


def _table(results_json: str) -> str:
    data = json.loads(open(results_json).read())
    seconds = data.get("stage_seconds") or {}
    if not seconds:
        raise SystemExit(f"{results_json}: no stage_seconds (not a ladder run's results.json?)")
    return "{\n" + "".join(f"    {k!r}: {round(v)},\n" for k, v in seconds.items()) + "}"


if __name__ == "__main__":  # pragma: no cover - a helper for refreshing the tables above
    print(_table(sys.argv[1]))
