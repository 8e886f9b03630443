"""Experiments: the kinds ``retrieval run`` knows (:mod:`.kinds`), each composed of the pipeline's
steps (:mod:`retrieval.steps`) and the one held-out chooser, and the shipped experiment files
(``*.toml``, read by :mod:`.files`)."""
