"""Checkpoints live in :mod:`retrieval.checkpoint` (a low module: feature extractors read trained
models without importing training); this name stays for existing imports."""
from ..checkpoint import *  # noqa: F401,F403
from ..checkpoint import __all__, FORMAT, VERSION  # noqa: F401
