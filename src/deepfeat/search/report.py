"""Writing search results: an HTML page of thumbnails, or JSON.

Example:
    >>> write_results(deepfeat.search("feats.index", ["cat.jpg"]), "results.html")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from ..errors import UsageError
from ..reports.search_page import write_search_page
from .query import QueryResult


def write_results(results: Sequence[QueryResult], out: str | os.PathLike, index: str | os.PathLike = "") -> str:
    """``.html``: each query beside its neighbours (thumbnails); ``.json``: a list of per-query objects."""
    out = os.fspath(out)
    ext = os.path.splitext(out)[1].lower()
    if ext == ".html":
        return write_search_page(results, out, subtitle=f"index {os.fspath(index)}" if index else "")
    if ext == ".json":
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump([r.to_dict() for r in results], f, indent=1)
        return out
    raise UsageError(f"The 'out' parameter of search must end in .html or .json; got {out!r} instead.")
