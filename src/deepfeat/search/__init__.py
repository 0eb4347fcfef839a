"""Search over a store: near-duplicates (and split leakage), a nearest-neighbour index, query by example.

* :func:`duplicates` -- every pair of rows at cosine similarity >= a threshold, groups, leaks into train;
* :func:`build_index` / :func:`open_index` -- an on-disk index of one layer (exact, faiss flat or IVF);
* :func:`search` -- the nearest stored rows of image files (embedded as the store was) or stored ids.

Example:
    >>> import deepfeat
    >>> deepfeat.duplicates("feats/", "dups/")                     # doctest: +SKIP
    >>> deepfeat.build_index("feats/", "feats.index")               # doctest: +SKIP
    >>> deepfeat.search("feats.index", ["cat.jpg"], top_k=5)        # doctest: +SKIP
"""

from __future__ import annotations

import sys as _sys
import types as _types

from .duplicates import DEFAULT_THRESHOLD, DuplicatesSummary, duplicates
from .index import KINDS, Neighbor, SearchIndex, build_index, open_index
from .query import QueryResult, search

__all__ = [
    "DEFAULT_THRESHOLD",
    "DuplicatesSummary",
    "KINDS",
    "Neighbor",
    "QueryResult",
    "SearchIndex",
    "build_index",
    "duplicates",
    "open_index",
    "search",
]


class _SearchModule(_types.ModuleType):
    """``deepfeat.search`` is this package once it is imported (Python sets the attribute on import),
    and the function :func:`search` by the public API's name: calling the package calls the function."""

    def __call__(self, *args: object, **kwargs: object) -> list[QueryResult]:
        return search(*args, **kwargs)  # type: ignore[arg-type]


_sys.modules[__name__].__class__ = _SearchModule
