"""Progress and a summary line for the Python API, by default: ``deepfeat.extract(...)`` in a script
or a notebook shows what the command line shows.

The verbs that :mod:`deepfeat` exports (``extract``, ``train``, ``probe``, ``evaluate``, ``analyze``,
``full_network_embedding``, ``export_store``, ``predict_images``, ``train_cnn``, ``finetune``) are
wrapped by :func:`reported`. Unless a reporter is already installed (the command line installs its
own), the call runs with the command line's reporter (:class:`deepfeat.progress.Reporter`: a bar on a
terminal or in a notebook, plain periodic lines otherwise, on stderr) and, for the verbs that report
through events, the command line's renderer (:class:`deepfeat.cli.common.EventRenderer`); at the end one
summary line says what was done. ``progress=False`` silences both (tasks then go to logging at INFO,
as before), and so does a level above INFO set on the ``deepfeat`` logger. A callable ``progress``
is the caller's own renderer and is passed through.

The modules' own functions (``deepfeat.extraction.extract``) stay silent: only the package's
exports are wrapped.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from . import progress as _progress
from .cli.common import EventRenderer

#: function name -> the kind of the command line's event renderer (None: the verb reports through
#: progress tasks only) and what its result says in one line
_SUMMARIES: dict[str, tuple[str | None, Callable[[Any], str]]] = {
    "extract": (
        "extract",
        lambda s: (
            f"extract: {s.embedded_now:,} embedded and {s.failed_now:,} failed this run in {s.seconds:.1f} s; "
            f"{s.out} holds {s.embedded_total:,} embedded, {s.failed_total:,} failed, {s.excluded:,} excluded"
            + (f"; {s.decode_workers}" if s.decode_workers else "")
        ),
    ),
    "train": (
        "train",
        lambda r: (
            f"train: {r.head_kind} ({r.solver}) on {', '.join(s.name for s in r.layers)} in {r.seconds:.1f} s; "
            + (
                f"validation accuracy {r.validation['accuracy']:.4f} on {r.validation['n']:,} rows "
                f"({r.validation['source']})"
                if r.validation.get("n")
                else "no validation rows"
            )
            + (f"; saved {r.bundle_path}" if r.bundle_path else "")
        ),
    ),
    "probe": ("probe", lambda r: f"probe: {len(r.rows)} candidates in {r.seconds:.1f} s. {r.advice}"),
    "train_cnn": ("cnn", lambda r: _cnn_line(r)),
    "finetune": ("cnn", lambda r: _cnn_line(r)),
    "evaluate": (None, lambda rep: f"evaluate: accuracy {rep['accuracy']:.4f} on {rep['n']:,} rows of {rep['split']}"),
    "analyze": (None, lambda s: f"analyze: report {s['report']} in {s['seconds']:.1f} s"),
    "full_network_embedding": (None, lambda s: f"fne: {s.rows:,} rows x {s.dims:,} dims in {s.out} ({s.seconds:.1f} s)"),
    "export_store": (None, lambda paths: f"export: wrote {', '.join(paths)}"),
    "predict_images": (
        None,
        lambda preds: (
            f"predict: {len(preds):,} predictions ({sum(p.error is not None for p in preds):,} could not be classified)"
        ),
    ),
}


def _cnn_line(r: Any) -> str:
    m = r.metrics
    test = f", test accuracy {m['test_accuracy']:.4f}" if "test_accuracy" in m else ""
    return (
        f"{r.kind}: valid accuracy {m['valid_accuracy']:.4f} ({m['valid_source']}){test} in {r.seconds:.1f} s; "
        f"model directory {r.out}"
    )


def _silenced() -> bool:
    """The user set the ``deepfeat`` logger above INFO: the API stays quiet."""
    level = logging.getLogger("deepfeat").level
    return level != logging.NOTSET and level > logging.INFO


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the default progress and summary line of the Python API (see the module docstring)."""
    kind, summarize = _SUMMARIES[fn.__name__]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        wanted = kwargs.get("progress")
        if isinstance(wanted, bool):
            del kwargs["progress"]
        if wanted is False or _progress.current() is not None or _silenced() or callable(wanted):
            return fn(*args, **kwargs)
        reporter = _progress.Reporter("auto", notebook=_in_notebook())
        renderer = None
        if kind is not None:
            renderer = EventRenderer(kind, to_stderr=True)
            kwargs["progress"] = renderer
        with reporter.installed():
            try:
                result = fn(*args, **kwargs)
            finally:
                if renderer is not None:
                    renderer.close()
            reporter.write(summarize(result))
        return result

    return call


def _in_notebook() -> bool:
    """Running in a Jupyter kernel (whose stderr is no terminal, yet shows a tqdm.auto bar)."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not IPython after all
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"
