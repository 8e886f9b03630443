"""End-to-end benchmarks as reusable functions (the scripts under ``benchmarks/`` and the
``retrieval bench`` command call them).

* :mod:`retrieval.bench.e1_e7`: the experiment ladder E1-E7 (global EfficientNet descriptors, fine-tuned
  and Siamese-trained, then SIFT / VLAD / patch re-ranking fused with weight v) on GLDv2-format data,
  plus the Oxford subset.
* :mod:`retrieval.bench.plots`: its figures.
* :mod:`retrieval.bench.multiview`: the multi-view protocol (experiment kind ``multiview``), with
  :mod:`~retrieval.bench.mv_models` (teacher, students, the distillation chosen on held-out seen
  objects), :mod:`~retrieval.bench.mv_eval` (view-set scores, summary, figures) and
  :mod:`~retrieval.bench.mv_features` (pre-extracted feature files, both metric conventions).
* :mod:`retrieval.bench.pr_plot`: the precision-recall figure any protocol can draw.
"""
