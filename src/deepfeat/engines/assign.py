"""Who processes which part: pure functions, no Ray, no I/O (unit-tested in tests/test_ray.py).

The unit of work is an output part (shard). Parts are named before dispatch, so which
worker writes a part never changes what the part contains.

Example:
    >>> assign_parts(7, 3)
    [[0, 3, 6], [1, 4], [2, 5]]
    >>> steal([[], [1, 4, 7], [2]])
    (1, 7)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError
from ..params import check_int


def assign_parts(n_parts: int, n_workers: int) -> list[list[int]]:
    """Deal part indices ``0..n_parts-1`` round-robin to ``n_workers`` queues.

    Round-robin (rather than contiguous blocks) keeps the parts committed early close to the
    start of the plan, so an interrupted run leaves few holes, and balances a ragged last part.
    Deterministic: the same arguments always give the same queues.

    Raises:
        UsageError: ``n_parts < 0`` or ``n_workers < 1``.
    """
    check_int(n_parts, "n_parts", minimum=0, where="assign_parts")
    check_int(n_workers, "n_workers", minimum=1, where="assign_parts")
    return [list(range(w, n_parts, n_workers)) for w in range(n_workers)]


def steal(queues: Sequence[Sequence[int]]) -> tuple[int, int] | None:
    """The part an idle worker should take over: ``(victim queue, part)`` or ``None``.

    The victim is the longest queue (the first one on ties) holding at least two parts; its
    last part is taken, so the victim keeps its next one and nobody waits for a straggler.
    """
    best = -1
    for i, q in enumerate(queues):
        if len(q) >= 2 and (best < 0 or len(q) > len(queues[best])):
            best = i
    return (best, queues[best][-1]) if best >= 0 else None


def workers_for(n_parts: int, capacity: int, requested: int | None = None) -> int:
    """How many workers to start: ``requested`` (checked against ``capacity``) or all that fit.

    Never more workers than parts, and at least one.

    Raises:
        UsageError: ``requested`` is below 1, or more than the cluster can place (``capacity``,
            which may be 0 when no node has the CPUs/GPUs one worker needs).
    """
    if capacity < 1:
        raise UsageError(
            "The Ray cluster has no room for a single worker with the requested CPUs/GPUs per "
            "worker; check 'ray status' or ask for fewer resources per worker."
        )
    if requested is not None:
        check_int(requested, "ray_workers", minimum=1)
        if requested > capacity:
            raise UsageError(
                f"{requested} Ray workers were asked for but the cluster has room for {capacity} with the "
                "requested CPUs/GPUs per worker; ask for fewer workers or fewer resources per worker."
            )
        n = requested
    else:
        n = capacity
    return max(1, min(n, max(1, n_parts)))
