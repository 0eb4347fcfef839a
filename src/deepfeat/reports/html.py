"""One look for every HTML page deepfeat writes (analyze, evaluate, probe, predict galleries).

A page is a single self-contained file: the style sheet is inline, figures and thumbnails are
``data:`` URIs, and nothing is fetched from the network (no fonts, no scripts, no CDN), so it
opens the same on an offline machine, in a mail attachment or in a CI artefact.

Example:
    >>> from deepfeat.reports import html as H
    >>> body = H.section("Numbers", H.table([{"layer": "pre_logits", "accuracy": 0.8312}]))
    >>> page = H.page("deepfeat probe", body, subtitle="store feats/")
    >>> page.startswith("<!doctype html>") and "http" not in page
    True
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._version import __version__
from ..store.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

#: Largest source file a thumbnail is made from (bytes); bigger ones show the placeholder.
THUMB_MAX_BYTES = 64 << 20
#: Largest decoded image a thumbnail is made from (pixels): PIL's decompression-bomb guard.
THUMB_MAX_PIXELS = 100_000_000

CSS = """
:root{--fg:#1d232b;--muted:#5b6572;--line:#d9dee5;--bg:#ffffff;--panel:#f5f7fa;--accent:#2f6fb2;
--good:#2e7d32;--bad:#c62828}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
background:var(--bg);max-width:1180px;margin:0 auto;padding:0 20px 40px;line-height:1.45}
header{border-bottom:3px solid var(--accent);margin-bottom:14px;padding:14px 0 8px}
header h1{margin:0;font-size:26px}
header .sub{color:var(--muted);font-size:13px;margin-top:4px;word-break:break-all}
h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
p.note{color:var(--muted);font-size:13px}
.tablewrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
td,th{border:1px solid var(--line);padding:3px 8px;text-align:right}
th{background:var(--panel);font-weight:600}
td.l,th.l{text-align:left}
tr.best td{background:#e7f1fb;font-weight:600}
img.fig{max-width:100%;border:1px solid var(--line);margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:14px;margin:8px 0 12px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:130px}
.card .v{font-size:24px;font-weight:700}
.card .k{font-size:12px;color:var(--muted)}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.thumb{width:150px;border:1px solid var(--line);border-radius:6px;padding:6px;font-size:11.5px;background:var(--bg)}
.thumb img,.thumb .ph{width:136px;height:136px;object-fit:contain;image-rendering:pixelated;background:#eee;
display:block;border-radius:3px}
.thumb .ph{display:flex;align-items:center;justify-content:center;color:var(--muted);text-align:center;
font-size:11px;padding:6px}
.thumb .t{font-weight:600;margin-top:4px;word-break:break-word}
.thumb ol{margin:2px 0 0;padding-left:18px}
.thumb .ok{color:var(--good);font-weight:600}.thumb .no{color:var(--bad);font-weight:600}
.path{color:var(--muted);font-size:10.5px;word-break:break-all}
.cm td{min-width:34px;text-align:center}
.reco{background:#e7f1fb;border-left:4px solid var(--accent);padding:8px 12px;margin:10px 0}
footer{margin-top:30px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:8px}
"""

esc = html.escape


def fmt(value: Any, digits: int = 4) -> str:
    """A cell's text: floats to ``digits`` significant places, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def page(title: str, body: str, *, subtitle: str = "") -> str:
    """The whole document: header, ``body`` (already HTML) and the footer."""
    sub = f'<div class="sub">{esc(subtitle)}</div>' if subtitle else ""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{sub}</header>\n{body}\n"
        f"<footer>deepfeat {esc(__version__)}: a self-contained page (no network access).</footer>"
        f"</body></html>\n"
    )


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{''.join(parts)}</section>\n"


def paragraph(text: str, note: bool = False) -> str:
    return f"<p{' class=note' if note else ''}>{esc(text)}</p>"


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Big numbers: ``[(label, value text), ...]``."""
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in items)
        + "</div>"
    )


def table(
    rows: Sequence[Mapping[str, Any]],
    *,
    digits: int = 4,
    left: Sequence[str] = (),
    highlight: Callable[[Mapping[str, Any]], bool] | None = None,
) -> str:
    """Rows of dicts (the first row's keys are the columns) as an HTML table."""
    if not rows:
        return ""
    keys = list(rows[0])
    left_set = set(left) or {keys[0]}

    def cls(k: str) -> str:
        return ' class="l"' if k in left_set else ""

    head = "".join(f"<th{cls(k)}>{esc(str(k))}</th>" for k in keys)
    body = []
    for r in rows:
        tr = '<tr class="best">' if highlight is not None and highlight(r) else "<tr>"
        body.append(tr + "".join(f"<td{cls(k)}>{esc(fmt(r.get(k), digits))}</td>" for k in keys) + "</tr>")
    return f'<div class="tablewrap"><table><tr>{head}</tr>{"".join(body)}</table></div>'  # wide: scrolls


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img_file(path: str | os.PathLike, alt: str) -> str:
    """An ``<img>`` holding a PNG file inline."""
    with open(path, "rb") as f:
        return f'<img class="fig" src="{data_uri(f.read())}" alt="{esc(alt)}">'


def img_figure(fig: Any, alt: str, dpi: int = 90) -> str:
    """An ``<img>`` holding a matplotlib figure inline (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return f'<img class="fig" src="{data_uri(buf.getvalue())}" alt="{esc(alt)}">'


def thumbnail_uri(path: str | os.PathLike | None, size: int = 136) -> str | None:
    """A small JPEG of the image at ``path`` as a data URI, or None when it cannot be read.

    Only regular files up to :data:`THUMB_MAX_BYTES` are opened; any decoding problem
    (missing, truncated, not an image, too many pixels) gives None, never an exception.
    """
    if not path:
        return None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > THUMB_MAX_BYTES:
            return None
        from PIL import Image

        with Image.open(path) as im:
            if im.width * im.height > THUMB_MAX_PIXELS:
                return None
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
        return data_uri(buf.getvalue(), "image/jpeg")
    except Exception as exc:  # noqa: BLE001 - a thumbnail is decoration: any failure shows the placeholder
        log.debug("no thumbnail for %r: %s", path, exc)
        return None


def thumb_card(path: str | None, title: str, lines: Sequence[str], *, thumb: str | None = None) -> str:
    """One image card: the thumbnail (or a placeholder), a title and some lines of HTML."""
    uri = thumb if thumb is not None else thumbnail_uri(path)
    shown = os.path.basename(path) if path else "(no source path)"
    pic = (
        f'<img src="{uri}" alt="{esc(shown)}">'
        if uri
        else f'<div class="ph">source image not available<br>{esc(shown)}</div>'
    )
    return (
        f'<div class="thumb">{pic}<div class="t">{title}</div>{"".join(lines)}'
        f'<div class="path">{esc(path or "")}</div></div>'
    )


def write(path: str | os.PathLike, document: str) -> str:
    """Write a page (temp file + rename, so a reader never sees half a page); returns the path."""
    path = os.fspath(path)
    atomic_write_bytes(path, document.encode("utf-8"))  # a failed write leaves no temporary file (EnvironmentFault)
    return path
