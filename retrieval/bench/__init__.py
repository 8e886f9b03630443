"""The ``retrieval bench`` command group. The benchmarks themselves are protocols (experiment kinds
in :mod:`retrieval.protocols`): the E1-E8 ladder is :mod:`retrieval.ladder`."""
