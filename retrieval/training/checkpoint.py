"""Checkpoints live in :mod:`retrieval.core.checkpoint` (a low module: feature extractors read trained
models without importing training). This name is the same module object, so existing imports and
patches of ``retrieval.training.checkpoint`` keep working."""
import sys

from retrieval.core import checkpoint as _checkpoint

sys.modules[__name__] = _checkpoint
