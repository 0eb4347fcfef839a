"""Plots a person can read: filters, activations, confusion matrix, training curves, embeddings.

Every function renders with matplotlib's Agg canvas created inside the function (pyplot and the
global backend are never touched, and nothing is imported when deepfeat is), writes one PNG
with a title, labelled axes and class names, and returns a :class:`PlotResult` describing it
(path, pixel size, number of panels).

Example:
    >>> from deepfeat.viz import plot_filters, plot_history
    >>> plot_filters("fm_cnn/", "conv1", "filters.png").panels      # doctest: +SKIP
    32
    >>> plot_history("fm_cnn/", "curves.png").size                   # doctest: +SKIP
    (1100, 420)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classify import softmax
from ..errors import InputError, UsageError
from ..history import read_history
from ..params import check_choice, check_int, param_error
from ..store.fsutil import check_writable, environment_errors

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..models.registry import Backbone
    from ..store.reader import FeatureStore

__all__ = [
    "PlotResult",
    "plot_filters",
    "plot_activations",
    "plot_confusion_matrix",
    "plot_history",
    "plot_embedding",
    "EMBEDDING_METHODS",
]

EMBEDDING_METHODS = ("pca", "tsne")
DEFAULT_DPI = 100


@dataclass
class PlotResult:
    """What a plot function wrote."""

    path: str
    size: tuple[int, int]  #: (width, height) in pixels of the PNG
    panels: int  #: image tiles / maps / axes holding data
    title: str
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers
def _figure(width_in: float, height_in: float) -> "Figure":
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a test dependency
        raise ImportError("Plots need matplotlib: pip install 'deepfeat[plot]' (or pip install matplotlib).") from exc
    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def _check_out(out: str | os.PathLike) -> str:
    """Up front, before the model or the store is read: ``out`` is a .png file in a writable folder."""
    out = os.fspath(out)
    if not out.lower().endswith(".png"):
        raise param_error("out", "a .png file", out)
    check_writable(out, "the plot")
    return out


def _save(fig: "Figure", out: str | os.PathLike, dpi: int, panels: int, title: str, **extra: Any) -> PlotResult:
    out = _check_out(out)
    parent = os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{os.getpid()}.png")
    with environment_errors(f"writing the plot {out}"):  # a full or read-only disk: exit 4, no temporary file
        try:
            os.makedirs(parent, exist_ok=True)
            fig.savefig(tmp, dpi=dpi, format="png")
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    from PIL import Image

    with Image.open(out) as im:
        size = im.size
    return PlotResult(out, (int(size[0]), int(size[1])), panels, title, extra)


def _backbone(model: "str | os.PathLike | Backbone") -> "Backbone":
    from ..models.registry import Backbone, load_backbone

    return model if isinstance(model, Backbone) else load_backbone(os.fspath(model))


def _grid(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _conv_module(bb: "Backbone", layer: str | None):
    """(name, Conv2d) of ``layer`` or of the first convolution inside it; ``None``: the model's first convolution."""
    from torch import nn

    if layer is None:
        for name, sub in bb.model.named_modules():
            if isinstance(sub, nn.Conv2d):
                return name, sub
        raise UsageError(f"The model {bb.name!r} holds no convolution layer; 'plot filters' shows convolution filters.")
    try:
        module = bb.model.get_submodule(layer)
    except AttributeError:
        convs = [n for n, m in bb.model.named_modules() if isinstance(m, nn.Conv2d)]
        import difflib

        close = difflib.get_close_matches(layer, convs, n=5, cutoff=0.5) or convs[:5]
        raise UsageError(
            f"Unknown layer {layer!r}; convolution layers include: {', '.join(close)} (run 'deepfeat layers MODEL --all')."
        ) from None
    if isinstance(module, nn.Conv2d):
        return layer, module
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return f"{layer}.{name}", sub
    raise UsageError(
        f"The layer {layer!r} ({type(module).__name__}) holds no convolution; pick a conv layer "
        "(see 'deepfeat layers MODEL --all')."
    )


# ----------------------------------------------------------------------------- filters
def plot_filters(
    model: "str | os.PathLike | Backbone",
    layer: str | None,
    out: str | os.PathLike,
    *,
    max_filters: int = 64,
    max_channels: int = 16,
    dpi: int = DEFAULT_DPI,
) -> PlotResult:
    """The learnt filters of a convolution layer.

    Filters with 3 input channels (a first layer) are shown as RGB tiles, filters with one
    input channel (a grayscale first layer, depthwise convolutions) as gray tiles, one per
    filter; deeper filters as a grid of one gray tile per (filter, input channel). Each tile is
    scaled to its own range. ``layer`` may name a block holding a convolution (e.g. ``conv1``);
    ``None`` shows the model's first convolution (``conv_stem`` for EfficientNet, ``conv1`` for a ResNet).
    """
    _check_out(out)
    bb = _backbone(model)
    name, conv = _conv_module(bb, layer)
    w = conv.weight.detach().float().cpu().numpy()  # out x in x kh x kw
    n_out, n_in, kh, kw = w.shape
    n_f = min(n_out, max_filters)
    shape_txt = f"{n_out}x{n_in}x{kh}x{kw}"
    shown = "" if n_f == n_out else f", first {n_f}"
    if n_in in (1, 3):
        rows, cols = _grid(n_f)
        tile = 0.9 if n_f <= 64 else 0.6
        fig = _figure(cols * tile + 0.8, rows * tile + 1.2)
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= n_f:
                ax.set_axis_off()
                continue
            if n_in == 3:
                ax.imshow(_unit(w[i].transpose(1, 2, 0)), interpolation="nearest")
            else:
                ax.imshow(_unit(w[i, 0]), cmap="gray", interpolation="nearest")
            ax.set_title(str(i), fontsize=7, pad=2)
        kind = "RGB" if n_in == 3 else "gray"
        title = f"{name}: {n_f} filters ({shape_txt}{shown}), {kind}"
        fig.supxlabel("filter index (row-major)", fontsize=9)
        fig.supylabel(f"{kh}x{kw} kernel", fontsize=9)
        panels, grid = n_f, (rows, cols)
    else:
        n_c = min(n_in, max_channels)
        tile = 0.45
        fig = _figure(n_c * tile + 1.2, n_f * tile + 1.3)
        axes = fig.subplots(n_f, n_c, squeeze=False)
        for i in range(n_f):
            f = _unit(w[i, :n_c])
            for j in range(n_c):
                ax = axes[i, j]
                ax.imshow(f[j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(str(i), fontsize=6, rotation=0, ha="right", va="center")
                if i == 0:
                    ax.set_title(str(j), fontsize=6, pad=2)
        title = (
            f"{name}: {n_f} filters x {n_c} input channels ({shape_txt}"
            f"{shown}{'' if n_c == n_in else f', first {n_c} channels'})"
        )
        fig.supxlabel("input channel", fontsize=9)
        fig.supylabel("filter", fontsize=9)
        panels, grid = n_f * n_c, (n_f, n_c)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out, dpi, panels, title, layer=name, grid=grid, weight_shape=[n_out, n_in, kh, kw])


# ----------------------------------------------------------------------------- activations
def plot_activations(
    model: "str | os.PathLike | Backbone",
    image: str | os.PathLike,
    layer: str,
    out: str | os.PathLike,
    *,
    max_maps: int = 64,
    dpi: int = DEFAULT_DPI,
) -> PlotResult:
    """One image's activations at ``layer``: a bar plot for a vector, a grid of maps for a conv layer.

    The title names the image and, when the model has class names, its predicted class.
    """
    from ..data.decode import decode_file
    from ..models.layers import OUTPUT, describe_layers, resolve_layers
    from ..runtimes import build_runtime, layer_specs

    _check_out(out)
    bb = _backbone(model)
    infos = describe_layers(bb)
    names = resolve_layers(layer, infos)
    if len(names) != 1:
        raise UsageError(f"The 'layer' parameter must name one layer; {layer!r} names {len(names)}.")
    name = names[0]
    try:
        img = decode_file(image).image
    except InputError as exc:
        raise UsageError(f"Cannot read the image {os.fspath(image)!r}: {exc}") from None
    taps = [name] + ([OUTPUT] if bb.class_names and OUTPUT in infos and name != OUTPUT else [])
    computer = build_runtime(bb, layer_specs(bb, taps, "none", infos), infos, runtime="torch", precision="fp32")
    # a writable copy: resize_crop may return a read-only view, which torch.from_numpy warns about
    feats = computer(np.array(bb.preprocess.resize_crop(img)[None]))
    act = feats[name][0].reshape(infos[name].shape)
    predicted = ""
    if bb.class_names and OUTPUT in feats:
        probs = softmax(feats[OUTPUT][0])
        k = int(probs.argmax())
        if k < len(bb.class_names):
            predicted = f"; predicted {bb.class_names[k]} ({float(probs[k]):.2f})"
    label = os.path.basename(os.fspath(image))
    shape_txt = "x".join(str(s) for s in act.shape)
    if act.ndim == 1:
        fig = _figure(11, 4.2)
        ax = fig.subplots()
        ax.bar(np.arange(act.size), act, width=1.0, color="tab:blue")
        ax.set_xlim(-0.5, act.size - 0.5)
        ax.set_xlabel("unit")
        ax.set_ylabel("activation")
        active = int((act > 0).sum())
        title = f"{name} ({act.size} units, {active} > 0) for {label}{predicted}"
        ax.set_title(title, fontsize=10)
        panels = 1
    elif act.ndim == 3:
        n = min(act.shape[0], max_maps)
        rows, cols = _grid(n)
        fig = _figure(cols * 1.1 + 0.8, rows * 1.1 + 1.2)
        axes = fig.subplots(rows, cols, squeeze=False)
        vmax = float(np.abs(act[:n]).max()) or 1.0
        for i, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= n:
                ax.set_axis_off()
                continue
            ax.imshow(act[i], cmap="viridis", vmin=min(0.0, float(act[:n].min())), vmax=vmax, interpolation="nearest")
            ax.set_title(str(i), fontsize=7, pad=2)
        title = f"{name} ({shape_txt}{'' if n == act.shape[0] else f', first {n} maps'}) for {label}{predicted}"
        fig.suptitle(title, fontsize=10)
        fig.supxlabel("channel (row-major)", fontsize=9)
        fig.supylabel(f"{act.shape[1]}x{act.shape[2]} map", fontsize=9)
        panels = n
    else:
        mat = act.reshape(act.shape[0], -1)
        fig = _figure(8, 6)
        ax = fig.subplots()
        im = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="activation")
        ax.set_xlabel("feature")
        ax.set_ylabel("token / row")
        title = f"{name} ({shape_txt}) for {label}{predicted}"
        ax.set_title(title, fontsize=10)
        panels = 1
    fig.tight_layout()
    return _save(fig, out, dpi, panels, title, layer=name, shape=list(act.shape))


# ----------------------------------------------------------------------------- confusion matrix
def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    out: str | os.PathLike,
    title: str = "",
    *,
    dpi: int = 110,
) -> PlotResult:
    """A confusion matrix (rows true, columns predicted) with class names.

    Colours show each row normalised (recall per class); counts are written in the cells when
    there are at most 30 classes. The figure grows with the number of classes up to 40 inches a
    side; beyond what fits there, only every n-th class is named on the axes (so that the names
    never overlap) and the axis titles say so; ``extra["label_step"]`` is that n.
    """
    cm = np.asarray(cm)
    k = len(class_names)
    if cm.shape != (k, k):
        raise UsageError(f"The confusion matrix has shape {cm.shape} but there are {k} class names.")
    side = float(min(40.0, max(6.0, 0.45 * k + 3)))
    font = max(4.0, min(10.0, 220.0 / max(k, 1)))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    # name every class while the names fit (about 1.4 x the font size per row, on ~75 % of a side
    # for the matrix itself); past that (hundreds of classes) name every step-th one instead of
    # drawing overlapping, unreadable names
    step = max(1, math.ceil(k * font * 1.4 / (side * 72.0 * 0.75)))
    ticks = list(range(0, k, step))
    names = [str(class_names[i]) for i in ticks]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=45 if k <= 30 else 90, ha="right" if k <= 30 else "center", fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
    every = f" (1 in {step} of the {k} classes named)" if step > 1 else ""
    ax.set_xlabel("predicted" + every)
    ax.set_ylabel("true" + every)
    total = int(cm.sum())
    title = title or f"confusion matrix ({total} images, accuracy {np.trace(cm) / max(total, 1):.3f})"
    ax.set_title(title, fontsize=10)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.tight_layout()
    return _save(fig, out, dpi, 1, title, label_step=step)


# ----------------------------------------------------------------------------- history
def plot_history(model_dir: str | os.PathLike, out: str | os.PathLike, *, dpi: int = DEFAULT_DPI) -> PlotResult:
    """Training curves of a model directory or a head bundle (``.dfm``): loss and validation accuracy per epoch.

    Reads the one history schema (:mod:`deepfeat.history`), and the ``valid_*`` keys of model
    directories written before it. Epochs without validation (a bundle trained without validation
    rows) leave gaps.
    """
    _check_out(out)
    model_dir = os.fspath(model_dir)
    rows = read_history(model_dir)
    epochs = [r["epoch"] for r in rows]
    fig = _figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train loss")
    ax_loss.plot(epochs, [_nan(r["val_loss"]) for r in rows], "s-", label="valid loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    acc = [_nan(r["val_accuracy"]) for r in rows]
    ax_acc.plot(epochs, acc, "o-", color="tab:green", label="valid accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    known = [a for a in acc if a == a]
    ax_acc.set_title(
        f"validation accuracy (last {known[-1]:.4f}, best {max(known):.4f})"
        if known
        else "validation accuracy (no validation rows)"
    )
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    title = f"training history of {os.path.basename(os.path.normpath(model_dir))} ({len(rows)} epochs)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, out, dpi, 2, title, epochs=len(rows))


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------- embedding
def plot_embedding(
    store: "str | os.PathLike | FeatureStore",
    layer: str | None,
    out: str | os.PathLike,
    *,
    method: str = "pca",
    split: str | None = None,
    max_points: int = 5000,
    seed: int = 0,
    dpi: int = DEFAULT_DPI,
) -> PlotResult:
    """A 2-D embedding (PCA or t-SNE) of one stored layer, one colour per class, with a legend.

    At most ``max_points`` rows (a seeded random sample) are shown; ``split`` restricts the rows.
    """
    from ..store.reader import FeatureStore, open_store

    _check_out(out)
    method = str(method).lower().replace("-", "")
    check_choice(method, "method", EMBEDDING_METHODS, where="plot_embedding")
    max_points = check_int(max_points, "max_points", minimum=3, where="plot_embedding")
    st = store if isinstance(store, FeatureStore) else open_store(os.fspath(store))
    if layer is None:
        if len(st.layer_names) != 1:
            raise UsageError(f"The store holds the layers {', '.join(st.layer_names)}; choose one with 'layer'.")
        layer = st.layer_names[0]
    if layer not in st.layer_names:
        raise UsageError(f"The store has no layer {layer!r}; it has: {', '.join(st.layer_names)}.")
    x, labels, _meta = st.load(layer, split=split)
    n_all = len(x)
    rng = np.random.default_rng(seed)
    if n_all > max_points:
        keep = np.sort(rng.choice(n_all, size=max_points, replace=False))
        x, labels = x[keep], labels[keep]
    if len(x) < 3:
        raise UsageError(f"An embedding needs at least 3 rows; the selection has {len(x)}.")
    x = np.asarray(x, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(x)
        ratio = pca.explained_variance_ratio_
        xlabel, ylabel = f"PC 1 ({ratio[0]:.1%} of variance)", f"PC 2 ({ratio[1]:.1%} of variance)"
        name = "PCA"
    else:
        from sklearn.manifold import TSNE

        if x.shape[1] > 50:
            from sklearn.decomposition import PCA

            x = PCA(n_components=min(50, len(x) - 1), random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
        xlabel, ylabel = "t-SNE 1", "t-SNE 2"
        name = "t-SNE"
    names = np.asarray(["(unlabelled)" if v is None else str(v) for v in labels], dtype=object)
    classes = sorted(set(names.tolist()))
    fig = _figure(10, 7)
    ax = fig.subplots()
    cmap_name = "tab10" if len(classes) <= 10 else "tab20"
    from matplotlib import colormaps

    cmap = colormaps[cmap_name]
    size = 12 if len(x) <= 2000 else 5
    for i, cls in enumerate(classes):
        sel = names == cls
        color = cmap(i % cmap.N) if len(classes) <= 20 else colormaps["hsv"](i / len(classes))
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=color, label=f"{cls} ({int(sel.sum())})", alpha=0.75, linewidths=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    where = f", split {split}" if split else ""
    sample = f"{len(x)} of {n_all} rows" if len(x) < n_all else f"{len(x)} rows"
    title = f"{name} of layer {layer!r} ({sample}{where})"
    ax.set_title(title, fontsize=11)
    if len(classes) <= 40:
        ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=2, frameon=False)
    fig.tight_layout()
    return _save(fig, out, dpi, 1, title, method=method, n_points=int(len(x)), classes=classes)
