"""End-to-end benchmarks as protocols (experiment kinds in :mod:`retrieval.protocols`; the scripts under
``benchmarks/`` are thin entry points, :mod:`retrieval.bench.entry`) and the ``retrieval bench``
command group.

* The E1-E8 ladder is :mod:`retrieval.ladder` (kind ``ladder``).
* :mod:`retrieval.bench.descriptors`: the landmark descriptor study (kind ``oxford-descriptors``).
* :mod:`retrieval.bench.multiview`: the multi-view protocol (experiment kind ``multiview``), with
  :mod:`~retrieval.bench.mv_models` (teacher, students, the distillation chosen on held-out seen
  objects), :mod:`~retrieval.bench.mv_eval` (view-set scores, summary, figures) and
  :mod:`~retrieval.bench.mv_features` (pre-extracted feature files, both metric conventions).
* :mod:`retrieval.bench.pr_plot`: the precision-recall figure any protocol can draw.
* :mod:`retrieval.bench.deep_speed` (EfficientNet inference paths and end-to-end extraction speed on any
  dataset) and :mod:`retrieval.bench.store_integrity` (what the feature stores' checksums and space
  reservation cost): benchmarks with a command line of their own, ``main(argv, prog) -> Path``.
"""
