"""End-to-end benchmarks as reusable functions (the scripts under ``benchmarks/`` and the
``retrieval bench`` command call them).

* :mod:`retrieval.bench.e1_e7`: the experiment ladder E1-E7 (global EfficientNet descriptors, fine-tuned
  and Siamese-trained, then SIFT / VLAD / patch re-ranking fused with weight v) on GLDv2-format data,
  plus the Oxford subset.
* :mod:`retrieval.bench.plots`: its figures.
"""
