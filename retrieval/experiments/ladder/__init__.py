"""The experiment ladder as a dataset-generic protocol (experiment kind ``ladder``).

Rungs (global descriptor: EfficientNet-Lite0, GeM, L2; exact cosine search):

* E1  ImageNet Lite0, no training;
* E2  fine-tuned with a classification head on the training images; E3 Siamese from ImageNet;
  E4 Siamese from E2 (object data only: they need training images);
* E5  the base rung's shortlist re-ranked with the RootSIFT ratio-test score; E6 with the RootSIFT
  VLAD similarity; E7 with EfficientNet patch tokens; SV with spatial verification (inliers); ASMK
  (opt-in: ``rerankers`` must name it) with the ASMK* similarity over the spatial-verification RootSIFT;
* E8  alpha query expansion and database-side augmentation of the base rung's vectors.

The base rung is E4 on object data (GLDv2 format, COIL-100 by default) and E1 on landmark data
(Oxford / Paris / revisited / GLDv2 ground truth, reported under the official and the
landmark-level relevance). Every re-ranker's fusion (or expansion) and its parameters are chosen by
cross-fitting (:mod:`retrieval.core.crossfit`) over two groups of queries, the base ranking winning ties.

Modules: :mod:`.config` (settings), :mod:`.data` (datasets, quick subsets, groups), :mod:`.training`
(E2-E4), :mod:`.stages` (cache, timer, extraction, search, shortlist), :mod:`.rungs` (re-rankers),
:mod:`retrieval.steps.choose` (the held-out choice, shared with ``retrieval run``), :mod:`.ladder` (the halves), :mod:`.tables`, :mod:`.plots`,
:mod:`.run` (``main``). It runs as ``retrieval run e1-e7`` (:mod:`retrieval.cli.run_command`; ``make bench``).
"""
from retrieval.experiments.ladder.settings import LadderConfig
from retrieval.experiments.ladder.run import CONFIG, main

__all__ = ["CONFIG", "LadderConfig", "main"]
