"""The one place that says where deepfeat caches things it can rebuild (exported runtimes, shard indexes)."""

from __future__ import annotations

import os


def cache_dir(*parts: str) -> str:
    """``$DEEPFEAT_CACHE_DIR`` or ``~/.cache/deepfeat``, joined with ``parts`` (not created).

    Example:
        >>> cache_dir("runtimes").endswith("runtimes")
        True
    """
    base = os.environ.get("DEEPFEAT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "deepfeat")
    return os.path.join(base, *parts)
