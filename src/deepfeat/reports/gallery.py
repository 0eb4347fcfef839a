"""``predict --out preds.html``: a self-contained gallery of the classified images with their top-k.

Example:
    >>> preds = deepfeat.predict_images("model.dfm", ["new_images/"])    # doctest: +SKIP
    >>> write_gallery(preds, "preds.html")                                 # doctest: +SKIP
    'preds.html'
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from . import html as H


def gallery_html(preds: Sequence[Any], title: str = "deepfeat predictions") -> str:
    """One card per prediction (thumbnail, top-k with scores, or the error); counts per top-1 class on top."""
    ok = [p for p in preds if not p.error]
    bad = len(preds) - len(ok)
    kind = next((getattr(p, "score_kind", "probability") for p in ok), "probability")
    counts = Counter(p.labels[0] for p in ok if p.labels)
    cards = []
    for p in preds:
        if p.error:
            cards.append(H.thumb_card(p.path, '<span class="no">not classified</span>', [f"<div>{H.esc(p.error)}</div>"]))
            continue
        scores = list(getattr(p, "scores", None) or getattr(p, "probabilities", None) or [])
        items = "".join(f"<li>{H.esc(lbl)} ({s:.3f})</li>" for lbl, s in zip(p.labels, scores))
        top = H.esc(p.labels[0]) if p.labels else "-"
        lines = [f"<ol>{items}</ol>"]
        near = getattr(p, "neighbors", None)
        if near is not None:
            n0 = near[0] if near else None
            lines.append(
                f"<div>nearest training: {H.esc(str(n0['label'] or '-'))} ({n0['similarity']:.3f})</div>"
                if n0
                else "<div>no training rows</div>"
            )
            if getattr(p, "far_from_training", False):
                lines.append('<div class="no">far from the training images</div>')
        cards.append(H.thumb_card(p.path, top, lines))
    summary = H.cards([("images", f"{len(preds):,}"), ("classified", f"{len(ok):,}"), ("not classified", f"{bad:,}")])
    per_class = H.table([{"top-1 class": c, "images": n} for c, n in counts.most_common()])
    body = (
        summary
        + H.section(
            "Images",
            H.paragraph(f"Top-k classes with their {kind} scores.", note=True),
            '<div class="grid">' + "".join(cards) + "</div>",
        )
        + (H.section("Top-1 classes", per_class) if counts else "")
    )
    return H.page(title, body, subtitle=f"{len(preds):,} images")


def write_gallery(preds: Sequence[Any], path: str | os.PathLike) -> str:
    """Write :func:`gallery_html` of ``preds`` to ``path``; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return H.write(path, gallery_html(preds))
