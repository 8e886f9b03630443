"""End-to-end benchmarks as protocols (experiment kinds in :mod:`retrieval.experiments.kinds`, run by ``retrieval
run NAME``) and the measurements of ``retrieval bench ...`` (:mod:`retrieval.cli.bench_commands`); the
scripts under ``benchmarks/`` are one-line aliases of those commands.

* The E1-E8 ladder is :mod:`retrieval.experiments.ladder` (kind ``ladder``).
* :mod:`retrieval.experiments.descriptors`: the landmark descriptor study (kind ``oxford-descriptors``).
* :mod:`retrieval.experiments.multiview`: the multi-view protocol (experiment kind ``multiview``), with
  :mod:`~retrieval.experiments.mv_models` (teacher, students, the distillation chosen on held-out seen
  objects), :mod:`~retrieval.experiments.mv_eval` (view-set scores, summary, figures) and
  :mod:`~retrieval.experiments.mv_features` (pre-extracted feature files, both metric conventions).
* :mod:`retrieval.bench.pr_plot`: the precision-recall figure any protocol can draw.
* :mod:`retrieval.bench.deep_speed` (EfficientNet inference paths and end-to-end extraction speed on any
  dataset), :mod:`retrieval.bench.index_speed`, :mod:`retrieval.bench.scale` and
  :mod:`retrieval.bench.store_integrity`: measurements, ``run(...)``, whose options are parsed by
  ``retrieval bench``.
"""
