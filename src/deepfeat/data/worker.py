"""Work done in decode worker processes: read, decode, resize and crop a batch of images.

This module imports only PIL and numpy (never torch), so workers start fast. Results are
plain tuples that pickle cheaply: decoded images travel as uint8 HxWx3 arrays.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from .augment import get_augmenter
from .decode import DecodePolicy, decode_data
from .preprocess import Preprocess
from .read import is_remote, prefetch, read_locator


@dataclass
class Decoded:
    """One successfully prepared image (view 0 plus any augmented views)."""

    id: str
    pixels: list[np.ndarray]  # one uint8 HxWx3 array per view
    meta: dict[str, Any]


@dataclass
class Failed:
    """One input that could not be used: ``reason`` class and message for the ledger."""

    id: str
    reason: str
    message: str


def watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Worker initializer: exit when the parent process dies (e.g. ``kill -9``).

    Pool workers hold both ends of their task pipe, so they would never see EOF and would
    wait forever as orphans; a daemon thread polls the parent pid instead.
    """
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="deepfeat-parent-watch", daemon=True).start()


def prepare_batch(
    items: Sequence[tuple[str, str | tuple[Any, ...], int]],
    preprocess: dict[str, Any],
    policy: DecodePolicy,
    augment: tuple[str, int] | None = None,
) -> list[Decoded | Failed]:
    """Decode and preprocess ``(id, locator, n_augmented_views)`` triples; bad inputs become :class:`Failed`.

    A locator is a file path or a place in a container (see :mod:`deepfeat.data.read`).

    ``augment`` is ``(spec, seed)``; an item with ``n`` augmented views gets pixels for view 0
    (plain preprocessing) and views 1..n, each seeded by (seed, id, view).
    :class:`~deepfeat.errors.EnvironmentFault` propagates: it must stop the run.
    """
    pre = Preprocess.from_dict(preprocess)
    out: list[Decoded | Failed] = []
    prefetch([path for _, path, _ in items], policy.max_file_bytes)  # remote members: one request per run
    for item_id, path, n_views in items:
        try:
            # a grey image stays one band up to the crop (the same pixels, a third of the resize)
            dec = decode_data(read_locator(path, policy.max_file_bytes), policy, draft=pre.draft_size, keep_grey=True)
            pixels = [pre.resize_crop(dec.image)]
            if n_views and augment is not None:
                augmenter = get_augmenter(*augment)
                rgb = dec.image.convert("RGB") if dec.image.mode != "RGB" else dec.image
                pixels.extend(pre.resize_crop(augmenter(rgb, item_id, v)) for v in range(1, n_views + 1))
            w, h = dec.size or dec.image.size
            out.append(
                Decoded(
                    item_id,
                    pixels,
                    {
                        "sha256": dec.sha256,
                        "format": dec.format,
                        "mode": dec.mode,
                        "n_frames": dec.n_frames,
                        "width": w,
                        "height": h,
                    },
                )
            )
        except InputError as exc:
            out.append(Failed(item_id, exc.reason, exc.message))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad item must never stop the run
            out.append(Failed(item_id, "decode_error", f"{type(exc).__name__}: {exc}"))
    return out


#: the largest input :func:`needs_torch` reads (bytes)
HEADER_READ_LIMIT = 16 << 20


def needs_torch(locator: str | tuple[Any, ...], preprocess: Preprocess, policy: DecodePolicy) -> bool:
    """Whether :func:`prepare_batch` resizes the input at ``locator`` with torch, from its header alone
    (``extract`` asks it of the first input to tell its decode workers whether to import torch ahead).

    An input whose header cannot be read says True: torch is imported ahead, as for any job before; so
    does a remote one (object storage), which is not fetched an extra time for this, and one over
    :data:`HEADER_READ_LIMIT` bytes (not read whole into this process: such a file is a downscale).

    Example:
        >>> needs_torch("photos/cat.jpg", Preprocess(input_size=(224, 224)), DecodePolicy())  # doctest: +SKIP
        True
    """
    if is_remote(locator):
        return True
    try:
        data = read_locator(locator, min(policy.max_file_bytes, HEADER_READ_LIMIT))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a warning about this file is the workers' to record
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - any fault here is the workers' to report, with the input
        return True
    return preprocess.downscales_with_torch(width, height)
