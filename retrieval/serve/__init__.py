"""``retrieval serve``: a web page and JSON API over a saved index.

>>> from retrieval.serve import Catalog, create_app
>>> catalog = Catalog.open(index="index.npz", features="db.h5", images="images/")
>>> app = create_app(catalog)          # a FastAPI app: uvicorn.run(app, host="127.0.0.1")
>>> live = LiveCatalog("my_collection/").start()   # a collection folder, its adds followed
>>> app = create_app(live, allow_add=True)         # + POST /api/add (loopback only, by the CLI's rule)

Needs the ``serve`` extra (``pip install hybrid-retrieval[serve]``: fastapi, uvicorn, python-multipart).
"""
from retrieval.serve.catalog import Catalog, FilterError, Query, Truth, UnsupportedUpload, build_extractor
from retrieval.serve.live import LiveCatalog
from retrieval.serve.search import SearchResult, pair_matches, search
from retrieval.serve.uploads import UploadError, UploadLimits, decode_upload

__all__ = ["Catalog", "LiveCatalog", "FilterError", "Query", "Truth", "UnsupportedUpload", "build_extractor", "SearchResult", "search",
           "pair_matches", "UploadError", "UploadLimits", "decode_upload", "create_app"]


def create_app(*args, **kwargs):
    """:func:`retrieval.serve.app.create_app` (imported on use: it needs fastapi)."""
    from retrieval.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
