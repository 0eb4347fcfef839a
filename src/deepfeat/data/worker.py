"""Work done in decode worker processes: read, decode, resize and crop a batch of images.

This module imports only PIL and numpy (never torch), so workers start fast. Results are
plain tuples that pickle cheaply: decoded images travel as uint8 HxWx3 arrays.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .decode import DecodePolicy, decode_file
from .preprocess import Preprocess


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
    items: Sequence[tuple[str, str]],
    preprocess: dict[str, Any],
    policy: DecodePolicy,
    views: Sequence[tuple[int, Any]] = (),
) -> list[Decoded | Failed]:
    """Decode and preprocess ``(id, path)`` pairs; bad inputs become :class:`Failed`.

    ``views`` lists ``(view_index, augmentation)`` pairs applied per item after decoding
    (each augmentation is a callable ``(image, item_id, view_index) -> image``).
    :class:`~deepfeat.errors.EnvironmentFault` propagates: it must stop the run.
    """
    pre = Preprocess.from_dict(preprocess)
    out: list[Decoded | Failed] = []
    crash_on = os.environ.get("DEEPFEAT_TEST_CRASH_ON")  # test hook: simulate a codec killing the worker
    for item_id, path in items:
        if crash_on and crash_on in path:
            os._exit(70)
        try:
            dec = decode_file(path, policy)
            pixels = [pre.resize_crop(dec.image)]
            for view_index, augment in views:
                pixels.append(pre.resize_crop(augment(dec.image, item_id, view_index)))
            w, h = dec.image.size
            out.append(Decoded(item_id, pixels, {"sha256": dec.sha256, "format": dec.format, "mode": dec.mode,
                                                 "n_frames": dec.n_frames, "width": w, "height": h}))
        except InputError as exc:
            out.append(Failed(item_id, exc.reason, exc.message))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad item must never stop the run
            out.append(Failed(item_id, "decode_error", f"{type(exc).__name__}: {exc}"))
    return out
