"""``deepfeat duplicates``' report.html: near-duplicate groups as thumbnails, cross-split leaks first.

Example:
    >>> s = deepfeat.duplicates("feats/", "dups/")   # writes dups/report.html   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from . import html as H


def duplicates_html(
    meta: dict[str, list], groups: Sequence[tuple[list[int], float]], summary: Any, store_path: str, max_groups: int = 200
) -> str:
    """The page: summary cards, leaks per split, then one row of thumbnails per group."""
    split = meta["split"]
    cross = [g for g in groups if len({split[r] for r in g[0]}) > 1]
    cards = H.cards(
        [
            ("rows compared", f"{summary.rows:,}"),
            ("near-duplicate pairs", f"{summary.pairs:,}"),
            ("groups", f"{summary.groups:,}"),
            ("groups across splits", f"{len(cross):,}"),
        ]
        + ([("pairs found by their pixels only", f"{summary.pixel_pairs:,}")] if summary.pixel_threshold else [])
        + ([("images not read (features only)", f"{len(summary.unread):,}")] if summary.unread else [])
        + [(f"{s} inputs with a near-duplicate in train", f"{n:,}") for s, n in summary.leaks.items()]
    )
    pixels = (
        f", or whose images' grey thumbnails correlate at {summary.pixel_threshold:g} or more at the "
        "finest size both hold (re-encodes and downscales the features miss; unread.csv lists the images "
        "that could not be read)"
        if summary.pixel_threshold
        else ""
    )
    intro = H.paragraph(
        f"Rows of layer {summary.layer} whose cosine similarity is at least {summary.threshold:g}{pixels} "
        "are near-duplicates; groups are their connected components. Groups that span splits "
        "come first: a val/test input with a near-duplicate in train inflates the accuracy "
        "measured on it.",
        note=True,
    )
    leak_table = H.table([{"split": s, "inputs with a near-duplicate in train": n} for s, n in summary.leaks.items()])
    shown = groups[:max_groups]
    blocks = []
    for g, (members, best) in enumerate(shown, 1):
        spans = sorted({split[r] or "-" for r in members})
        leak = len(spans) > 1
        title = f"group {g}: {len(members)} images, best similarity {best:.4f}" + (
            f" -- across splits {', '.join(spans)}" if leak else f" -- {spans[0]}"
        )
        cards_html = []
        for r in members[:12]:
            cls = "no" if leak and split[r] != "train" else "ok"
            cards_html.append(
                H.thumb_card(
                    meta["path"][r],
                    f'<span class="{cls}">{H.esc(split[r] or "-")}</span>',
                    [f"<div>{H.esc(meta['label'][r] or '')}</div>"],
                )
            )
        more = H.paragraph(f"... and {len(members) - 12} more (see groups.csv)", note=True) if len(members) > 12 else ""
        blocks.append(
            f'<div class="group{" leak" if leak else ""}"><h3>{H.esc(title)}</h3>'
            f'<div class="grid">{"".join(cards_html)}</div>{more}</div>'
        )
    note = (
        H.paragraph(
            f"Showing the first {len(shown)} of {len(groups)} groups; pairs.csv and groups.csv hold them all.", note=True
        )
        if len(groups) > len(shown)
        else ""
    )
    body = (
        cards
        + intro
        + (H.section("Leaks into train", leak_table) if summary.leaks else "")
        + H.section("Groups", note, "".join(blocks) if blocks else H.paragraph("No near-duplicates found."))
    )
    return H.page("deepfeat duplicates", body, subtitle=f"store {store_path}")


def write_duplicates_page(
    path: str | os.PathLike, meta: dict[str, list], groups: Sequence[tuple[list[int], float]], summary: Any, store_path: str
) -> str:
    """Write :func:`duplicates_html` to ``path``; returns the path."""
    return H.write(path, duplicates_html(meta, groups, summary, store_path))
