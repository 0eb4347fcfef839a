"""Edited copies found by their pixels: JPEG re-encodes and downscales that move the CNN features too far.

A re-encoded or shrunk thumbnail can sit farther from its original in a CNN's feature space than
two distinct products do (docs/SEARCH.md: on Fashion-MNIST at 96 px, a halved image keeps cosine
0.58 to its original on ``pre_logits`` while distinct items reach 0.95). Its pixels, brought to a
resolution both images hold, still agree. So each row gets a *thumbnail pyramid*: its grey levels
resized (bicubic, antialiased) to each side in :data:`LEVELS` up to the image's own short side,
centred and normalised, so that an inner product is a Pearson correlation.

1. **Candidates**: every pair whose :data:`CANDIDATE_LEVEL` thumbnails correlate at
   >= :data:`CANDIDATE_THRESHOLD`, searched with the same exact or partitioned scan as the features.
2. **Verified** at the finest level both images hold (a 28 px original against its 14 px copy is
   compared at 12 px, two photos at 32 px): a copy when the correlation reaches the pixel threshold
   (default :data:`DEFAULT_PIXEL_THRESHOLD`, measured in docs/SEARCH.md).

Rows whose image cannot be read any more (moved, deleted, a member of a shard) have no pyramid and
are compared by their features only; :func:`pyramids` counts them and says why.

Example:
    >>> pyr = pyramids(["a.png", "b.jpg"], "scratch/")              # doctest: +SKIP
    >>> pixel_pairs(pyr, 0.9875, search=scan)                      # doctest: +SKIP
    (array([0]), array([1]), array([0.997], dtype=float32))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..errors import InputError
from ..store.reader import source_paths
from .index import RowFile

log = logging.getLogger(__name__)

#: sides (pixels) of the square grey thumbnails each row keeps, finest last
LEVELS = (8, 12, 16, 24, 32)
#: the level every row is searched at for candidate pairs (images smaller than it are enlarged)
CANDIDATE_LEVEL = 12
#: correlation at :data:`CANDIDATE_LEVEL` from which a pair is verified (planted copies reach it: docs/SEARCH.md)
CANDIDATE_THRESHOLD = 0.95
#: correlation at the finest common level from which two images are copies (measured: docs/SEARCH.md)
DEFAULT_PIXEL_THRESHOLD = 0.9875
#: JPEGs are decoded at a reduced scale while both sides stay at least this large (the pyramid needs 32)
DRAFT_SIDE = 64
#: rows per task sent to a worker process
CHUNK_ROWS = 512
#: fewer rows than this are read in this process (a worker's start costs more)
INLINE_ROWS = 4096

_OFFSETS = np.cumsum([0] + [side * side for side in LEVELS])
#: values per row of a pyramid file
PYRAMID_DIMS = int(_OFFSETS[-1])


@dataclass
class Pyramids:
    """The thumbnail pyramids of some rows: a :class:`RowFile` of ``rows x PYRAMID_DIMS`` float16
    values, the candidate-level thumbnails as a second one, each row's finest level (0: unread)."""

    pyramid: RowFile
    candidates: RowFile
    level: np.ndarray
    unread: dict[int, str] = field(default_factory=dict)  #: row -> why its image could not be read


def level_of(width: int, height: int) -> int:
    """The finest level an image of this size holds (the coarsest level for images smaller than all)."""
    side = min(width, height)
    held = [lv for lv in LEVELS if lv <= side]
    return held[-1] if held else LEVELS[0]


def pyramid_of(data: bytes) -> tuple[np.ndarray, int]:
    """(``PYRAMID_DIMS`` float16 values, finest level) of an encoded image, decoded by the default policy.

    Levels above the image's own finest level are zeros, except :data:`CANDIDATE_LEVEL` (an image
    smaller than it is enlarged). A flat image (one grey level) has all zeros: it correlates with nothing.

    Example:
        >>> import io; from PIL import Image
        >>> buf = io.BytesIO(); Image.linear_gradient("L").resize((40, 30)).save(buf, "PNG")
        >>> values, level = pyramid_of(buf.getvalue())
        >>> values.shape, level
        ((2064,), 24)
    """
    from ..data.decode import decode_data

    return _pyramid(decode_data(data, draft=DRAFT_SIDE))


def _pyramid(decoded: Any) -> tuple[np.ndarray, int]:
    from PIL import Image

    top = level_of(*decoded.size)
    grey = decoded.image.convert("L")
    out = np.zeros(PYRAMID_DIMS, dtype=np.float32)
    for i, side in enumerate(LEVELS):
        if side > top and side != CANDIDATE_LEVEL:
            continue
        v = np.asarray(grey.resize((side, side), Image.BICUBIC), dtype=np.float32).ravel()
        v = v - v.mean()
        norm = float(np.linalg.norm(v))
        if norm > 0:
            out[_OFFSETS[i] : _OFFSETS[i + 1]] = v / norm
    return out.astype(np.float16), top


def _read_chunk(images: Sequence[tuple[str | None, str | None]]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Pyramids of some rows' images, each ``(path, sha256 when extracted)``: (values, levels, {position: why unread})."""
    from ..data.decode import decode_data
    from ..data.read import read_locator

    values = np.zeros((len(images), PYRAMID_DIMS), dtype=np.float16)
    levels = np.zeros(len(images), dtype=np.int8)
    unread: dict[int, str] = {}
    for k, (path, sha256) in enumerate(images):
        if not path:
            unread[k] = "no path recorded"
            continue
        try:
            decoded = decode_data(read_locator(path, 1 << 30), draft=DRAFT_SIDE)
        except (InputError, OSError, ValueError) as exc:
            unread[k] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        if sha256 and decoded.sha256 != sha256:
            unread[k] = "the file changed since it was extracted"
            continue
        values[k], levels[k] = _pyramid(decoded)
    return values, levels, unread


def pyramids(
    paths: Sequence[str | None],
    folder: str,
    workers: int | None = None,
    task: Any = None,
    sha256: Sequence[str | None] | None = None,
) -> Pyramids:
    """Read every row's image (``paths[row]``) into thumbnail pyramids under ``folder``.

    With ``sha256`` (each row's digest when it was extracted), an image whose file changed since is
    left unread: its pixels are no longer the ones its features describe.

    Rows are read ``CHUNK_ROWS`` at a time, in ``workers`` processes (default: one per core; the caller
    checks the value) from :data:`INLINE_ROWS` rows on. ``task`` (a progress task) advances by one per row.
    """
    os.makedirs(folder, exist_ok=True)
    n = len(paths)
    pyr_path, cand_path = os.path.join(folder, "pyramid.bin"), os.path.join(folder, "candidates.bin")
    lo, hi = int(_OFFSETS[LEVELS.index(CANDIDATE_LEVEL)]), int(_OFFSETS[LEVELS.index(CANDIDATE_LEVEL) + 1])
    level = np.zeros(n, dtype=np.int8)
    unread: dict[int, str] = {}
    digests = list(sha256) if sha256 is not None else [None] * n
    chunks = [list(zip(paths[s : s + CHUNK_ROWS], digests[s : s + CHUNK_ROWS])) for s in range(0, n, CHUNK_ROWS)]
    workers = workers or (os.cpu_count() or 1)
    pool = None
    if n >= INLINE_ROWS and workers > 1:
        from ..data.decode_pool import WORKER_CONTEXT, worker_started

        # as the decode workers: the user's main script is not re-run, and Ctrl-C reaches this process only
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=WORKER_CONTEXT, initializer=worker_started, initargs=(os.getpid(),)
        )
    try:
        results = pool.map(_read_chunk, chunks) if pool else map(_read_chunk, chunks)
        with open(pyr_path, "wb") as pf, open(cand_path, "wb") as cf:
            for c, (values, levels, bad) in enumerate(results):
                start = c * CHUNK_ROWS
                pf.write(values.tobytes())
                cf.write(np.ascontiguousarray(values[:, lo:hi]).tobytes())
                level[start : start + len(levels)] = levels
                unread.update({start + k: why for k, why in bad.items()})
                if task is not None:
                    task.update(len(levels))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if unread:
        log.warning(
            "pixel check: %d of %d images could not be read (compared by features only), e.g. %s",
            len(unread),
            n,
            next(iter(unread.values())),
        )
    return Pyramids(
        pyramid=RowFile(pyr_path, np.float16, n, PYRAMID_DIMS),
        candidates=RowFile(cand_path, np.float16, n, hi - lo),
        level=level,
        unread=unread,
    )


def pair_similarity(
    pyr: Pyramids, ii: np.ndarray, jj: np.ndarray, other: Pyramids | None = None, chunk: int = 4096
) -> np.ndarray:
    """Correlation of each pair's thumbnails at the finest level both hold (NaN when either is unread):
    rows ``ii`` of ``pyr`` against rows ``jj`` of ``other`` (default: ``pyr`` too)."""
    other = other or pyr
    out = np.full(len(ii), np.nan, dtype=np.float32)
    for s in range(0, len(ii), chunk):
        a, b = ii[s : s + chunk], jj[s : s + chunk]
        A, B = pyr.pyramid.take(a), other.pyramid.take(b)
        common = np.minimum(pyr.level[a], other.level[b])
        sim = out[s : s + chunk]
        for i, side in enumerate(LEVELS):
            m = common == side
            if m.any():
                cols = slice(int(_OFFSETS[i]), int(_OFFSETS[i + 1]))
                sim[m] = np.einsum("ij,ij->i", A[m, cols], B[m, cols])
    return out


def row_images(
    store: Any, ids: Sequence[str] | None = None, split: str | None = None
) -> tuple[list[str], list[str | None], list[str | None]]:
    """(ids, exact source paths, sha256 when extracted) of the store's view-0 rows: of one ``split``, or
    aligned with ``ids`` (an id the store does not hold gets None for both)."""
    rows = store.rows(["id", "view", "split", "path", "path_bytes", "sha256"])
    keep = pc.equal(rows.column("view"), 0)
    if split is not None:
        keep = pc.and_(keep, pc.equal(rows.column("split"), split))
    rows = rows.filter(keep)
    found, paths, digests = rows.column("id").to_pylist(), source_paths(rows), rows.column("sha256").to_pylist()
    if ids is None:
        return found, paths, digests
    at = {rid: k for k, rid in enumerate(found)}
    return (
        list(ids),
        [paths[at[i]] if i in at else None for i in ids],
        [digests[at[i]] if i in at else None for i in ids],
    )


def verified(pyr: Pyramids, threshold: float, other: Pyramids | None = None) -> Any:
    """A :data:`~deepfeat.search.blocks.Refine` for candidate pairs: their correlation at the finest
    common level where it reaches ``threshold``, else NaN (the pair is dropped)."""

    def refine(ii: np.ndarray, jj: np.ndarray, _candidate: np.ndarray) -> np.ndarray:
        sim = pair_similarity(pyr, ii, jj, other)
        return np.where(sim >= threshold, sim, np.float32(np.nan))

    return refine


def pixel_pairs(
    pyr: Pyramids,
    threshold: float,
    *,
    search: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` whose images are copies by their pixels: (i, j, correlation).

    ``search(vectors, threshold, refine)`` is the caller's exact or partitioned scan over a
    :class:`RowFile`, returning ``(i, j, similarity)``: candidates at :data:`CANDIDATE_THRESHOLD`
    are verified block by block as they are found, so only copies are ever held.
    """
    ii, jj, sim = search(pyr.candidates, CANDIDATE_THRESHOLD, verified(pyr, threshold))
    log.info("duplicates: %d pairs are copies by their pixels (>= %g)", len(ii), threshold)
    return ii, jj, sim
