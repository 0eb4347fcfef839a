"""``deepfeat search --out results.html``: each query beside its nearest stored rows, as thumbnails.

Example:
    >>> results = deepfeat.search("feats.index", ["cat.jpg"])        # doctest: +SKIP
    >>> write_search_page(results, "results.html")                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from . import html as H


def search_html(results: Sequence[Any], subtitle: str = "") -> str:
    """One block per query: the query's thumbnail, then its neighbours with similarity, split and label."""
    blocks = []
    for r in results:
        is_file = not r.query.startswith("id:")
        query_card = H.thumb_card(
            r.query if is_file else None,
            '<span class="ok">query</span>',
            [] if is_file else [f"<div>{H.esc(r.query)}</div>"],
        )
        if r.error:
            cards = [
                f'<div class="thumb"><div class="t"><span class="no">failed</span></div><div>{H.esc(r.error)}</div></div>'
            ]
        else:
            cards = [
                H.thumb_card(
                    n.path, f"{rank}. {n.similarity:.4f}", [f"<div>{H.esc(n.label or '-')} ({H.esc(n.split or '-')})</div>"]
                )
                for rank, n in enumerate(r.neighbors, 1)
            ]
        blocks.append(f'<h3>{H.esc(r.query)}</h3><div class="grid">{query_card}{"".join(cards)}</div>')
    bad = sum(r.error is not None for r in results)
    body = H.cards([("queries", f"{len(results):,}"), ("failed", f"{bad:,}")]) + H.section(
        "Nearest stored rows (cosine similarity)", "".join(blocks)
    )
    return H.page("deepfeat search", body, subtitle=subtitle)


def write_search_page(results: Sequence[Any], path: str | os.PathLike, subtitle: str = "") -> str:
    """Write :func:`search_html` to ``path``; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return H.write(path, search_html(results, subtitle))
