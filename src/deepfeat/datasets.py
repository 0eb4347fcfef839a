"""Real image data sets written out as folders of image files.

The benchmarks and examples need real images in the usual ``<split>/<class>/<file>`` layout.
:func:`write_fashion_mnist` writes Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) that way, from
the four idx files, which it looks for, in order, in:

1. the ``source`` argument (a directory);
2. the environment variable ``DEEPFEAT_FASHION_MNIST``;
3. the Debian package location ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``);
4. the cache ``~/.cache/deepfeat/fashion-mnist``, which an optional download from the official
   Zalando Research source fills (``download=True``; it fails fast without a network).

Each idx file may be gzipped (``name.gz``) or not. :data:`DATASETS` and :func:`write_dataset`
form the small registry behind ``deepfeat datasets NAME OUT``.
"""

from __future__ import annotations

import gzip
import logging
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from deepfeat.errors import EnvironmentFault, UsageError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "DatasetSummary",
    "load_fashion_mnist_arrays",
    "write_dataset",
    "write_fashion_mnist",
]

logger = logging.getLogger(__name__)

#: Fashion-MNIST class folder names, index order 0..9 (the official names, filesystem-friendly).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

#: Environment variable naming a directory that holds the four idx files.
FASHION_MNIST_ENV = "DEEPFEAT_FASHION_MNIST"
#: Where the Debian package ``dataset-fashion-mnist`` puts the files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Official download location (Zalando Research); ``<file>.gz`` is appended.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: Seconds before a download attempt gives up.
DOWNLOAD_TIMEOUT_S = 20.0

# split -> (images file, labels file), names without ".gz"
_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_SIDE = 28


@dataclass(frozen=True)
class DatasetSummary:
    """What a dataset writer produced.

    ``counts[split][class_name]`` is the number of images written to ``out_dir/split/class_name``.
    """

    name: str
    out_dir: Path
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    source: Path | None = None

    @property
    def total(self) -> int:
        """Number of images written, all splits together."""
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def split_total(self, split: str) -> int:
        """Number of images written for one split."""
        return sum(self.counts.get(split, {}).values())


# --------------------------------------------------------------------------- locating files


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "deepfeat" / "fashion-mnist"


def _find_file(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(directory: Path, bases: Iterable[str]) -> list[str]:
    return [b for b in bases if _find_file(directory, b) is None]


def _help_text() -> str:
    return (
        "Fashion-MNIST data not found. Either install the Debian package "
        "('apt-get install dataset-fashion-mnist', files in "
        f"{DEBIAN_FASHION_MNIST_DIR}), or set {FASHION_MNIST_ENV} / pass source= to a directory "
        "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (gzipped or not), or download "
        f"those four files from the official source {FASHION_MNIST_URL}<file>.gz "
        "(https://github.com/zalandoresearch/fashion-mnist)."
    )


def _download(bases: Iterable[str], cache_dir: Path) -> None:
    """Download the missing ``<base>.gz`` files into ``cache_dir``; stop at the first failure."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create cache directory {cache_dir}: {exc}. {_help_text()}") from exc
    for base in bases:
        url = f"{FASHION_MNIST_URL}{base}.gz"
        target = cache_dir / f"{base}.gz"
        tmp = cache_dir / f".{base}.gz.part-{os.getpid()}"
        logger.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as fh:
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError, ValueError) as exc:  # URLError/timeouts are OSError
            tmp.unlink(missing_ok=True)
            raise UsageError(f"download of {url} failed ({exc}). {_help_text()}") from exc


def _resolve_source(bases: list[str], source: str | os.PathLike[str] | None, download: bool) -> Path:
    """Return the directory that holds every file in ``bases`` (downloading if allowed)."""
    explicit: list[tuple[str, Path]] = []
    if source is not None:
        explicit.append(("source argument", Path(source).expanduser()))
    elif os.environ.get(FASHION_MNIST_ENV):
        explicit.append((FASHION_MNIST_ENV, Path(os.environ[FASHION_MNIST_ENV]).expanduser()))
    for what, directory in explicit:
        missing = _missing(directory, bases)
        if missing:
            raise UsageError(f"{what} {directory} lacks {', '.join(m + '[.gz]' for m in missing)}. {_help_text()}")
        return directory

    for directory in (DEBIAN_FASHION_MNIST_DIR, _default_cache_dir()):
        if not _missing(directory, bases):
            return directory

    cache_dir = _default_cache_dir()
    if not download:
        raise UsageError(_help_text())
    _download(_missing(cache_dir, bases), cache_dir)
    return cache_dir


# --------------------------------------------------------------------------- idx parsing


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UsageError(f"corrupt or unreadable idx file {path}: {exc}") from exc


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one idx file (big-endian header: magic, then ``ndim`` uint32 sizes) as uint8."""
    data = _read_bytes(path)
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise UsageError(f"corrupt idx file {path}: only {len(data)} bytes")
    found = int.from_bytes(data[0:4], "big")
    if found != magic:
        raise UsageError(f"corrupt idx file {path}: magic number {found}, expected {magic}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise UsageError(
            f"corrupt idx file {path}: header says {dims} ({expected} bytes), found {len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_split(split: str) -> None:
    if split not in _SPLIT_FILES:
        raise UsageError(f"unknown Fashion-MNIST split {split!r}; valid: {', '.join(_SPLIT_FILES)}")


def _load_split(split: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    images_base, labels_base = _SPLIT_FILES[split]
    images_path = _find_file(directory, images_base)
    labels_path = _find_file(directory, labels_base)
    assert images_path is not None and labels_path is not None  # ensured by _resolve_source
    images = _read_idx(images_path, _IMAGES_MAGIC, 3)
    labels = _read_idx(labels_path, _LABELS_MAGIC, 1)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise UsageError(f"corrupt idx file {images_path}: images are {images.shape[1:]}, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise UsageError(
            f"idx files disagree: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise UsageError(f"corrupt idx file {labels_path}: label {int(labels.max())} out of range 0..9")
    return images, labels.astype(np.int64)


def load_fashion_mnist_arrays(
    split: str,
    source: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of one split: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    ``split`` is ``"train"`` (60000 images) or ``"test"`` (10000). Files are located as
    described in the module docstring; a missing or corrupt file raises :class:`UsageError`.
    """
    _check_split(split)
    directory = _resolve_source(list(_SPLIT_FILES[split]), source, download)
    return _load_split(split, directory)


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EnvironmentFault(f"cannot write {path}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _select(labels: np.ndarray, per_class: int | None, shuffle: bool, seed: int) -> np.ndarray:
    """Indices to write, in ascending file order."""
    if per_class is None and not shuffle:
        return np.arange(labels.shape[0])
    rng = np.random.default_rng(seed) if shuffle else None
    chosen: list[np.ndarray] = []
    for label in range(len(FASHION_MNIST_CLASSES)):
        idx = np.flatnonzero(labels == label)
        if rng is not None:
            idx = rng.permutation(idx)
        if per_class is not None:
            if per_class > idx.size:
                logger.warning(
                    "class %s has only %d images (< per_class=%d)", FASHION_MNIST_CLASSES[label], idx.size, per_class
                )
            idx = idx[:per_class]
        chosen.append(idx)
    return np.sort(np.concatenate(chosen))


def write_fashion_mnist(
    out_dir: str | os.PathLike[str],
    per_class: int | None = None,
    splits: Iterable[str] = ("train", "test"),
    source: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    shuffle: bool = False,
    download: bool = True,
) -> DatasetSummary:
    """Write Fashion-MNIST as grayscale 28x28 PNG files (mode ``L``).

    Layout: ``out_dir/<split>/<class>/<split>_<index:05d>.png``, where ``index`` is the image's
    position in the split's idx file; nothing else, so that the folder is a clean image source
    (``deepfeat extract`` excludes nothing). The label order is :data:`FASHION_MNIST_CLASSES`.

    ``per_class=N`` keeps the first N images of each class in file order (deterministic);
    ``None`` keeps all. With ``shuffle=True`` the N are instead drawn at random using ``seed``
    (still reproducible). Each file is written to a temporary name and renamed, so a rerun
    overwrites with identical content and an interrupted run leaves no partial PNG. Files from
    an earlier run with a larger ``per_class`` are not removed.

    Example::

        >>> s = write_fashion_mnist("data/fmnist", per_class=20)   # doctest: +SKIP
        >>> s.counts["test"]["sneaker"], s.total                    # doctest: +SKIP
        (20, 400)
    """
    from PIL import Image

    splits = tuple(splits)
    if not splits:
        raise UsageError("splits is empty; choose from: train, test")
    for split in splits:
        _check_split(split)
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise UsageError(f"per_class must be a positive integer or None, got {per_class!r}")

    needed = [base for split in splits for base in _SPLIT_FILES[split]]
    directory = _resolve_source(needed, source, download)
    out = Path(out_dir)
    logger.info("writing Fashion-MNIST %s from %s to %s (per_class=%s)", "+".join(splits), directory, out, per_class)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentFault(f"cannot create {out}: {exc}") from exc

    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        images, labels = _load_split(split, directory)
        per_split = {name: 0 for name in FASHION_MNIST_CLASSES}
        for name in FASHION_MNIST_CLASSES:
            try:
                (out / split / name).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EnvironmentFault(f"cannot create {out / split / name}: {exc}") from exc
        for i in _select(labels, per_class, shuffle, seed):
            name = FASHION_MNIST_CLASSES[int(labels[i])]
            img = Image.fromarray(np.ascontiguousarray(images[i]))
            _atomic_write(out / split / name / f"{split}_{int(i):05d}.png", lambda p, img=img: img.save(p, format="PNG"))
            per_split[name] += 1
        counts[split] = per_split
        logger.info("wrote %d %s images", sum(per_split.values()), split)

    return DatasetSummary(name="fashion-mnist", out_dir=out, classes=FASHION_MNIST_CLASSES, counts=counts, source=directory)


# --------------------------------------------------------------------------- registry

#: Dataset writers by CLI name; each takes ``(out_dir, per_class=..., ...)``.
DATASETS: dict[str, Callable[..., DatasetSummary]] = {"fashion-mnist": write_fashion_mnist}


def write_dataset(name: str, out_dir: str | os.PathLike[str], **kwargs: Any) -> DatasetSummary:
    """Write the registered data set ``name`` (see :data:`DATASETS`) to ``out_dir``."""
    writer = DATASETS.get(name) or DATASETS.get(name.strip().lower().replace("_", "-"))
    if writer is None:
        raise UsageError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return writer(out_dir, **kwargs)
