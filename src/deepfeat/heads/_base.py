"""The shared machinery of deepfeat's heads: a torch model trained by mini-batch Adam.

Every head follows scikit-learn's estimator contract (``sklearn/linear_model/_stochastic_gradient.py``
is the model): ``__init__`` only stores parameters; parameters are validated in ``fit`` /
``partial_fit``; learned attributes end in ``_``; ``fit`` and ``partial_fit`` return ``self``.

* ``fit(X, y)`` runs up to ``max_iter`` epochs over the data in memory (mini-batches of
  ``batch_size``, shuffled with ``random_state``) and stops when the training loss has not
  improved by ``tol`` for ``n_iter_no_change`` epochs.
* ``partial_fit(X, y, classes=...)`` runs one pass over the batch it is given, keeping the
  optimiser state between calls: this is how :func:`deepfeat.train` streams a feature store.

The objective is ``sum_i w_i * loss_i / sum_i s_i + alpha / 2 * ||W||^2`` per mini-batch, where
``w_i`` = class weight x sample weight and ``s_i`` the sample weight (1 by default), so an integer
sample weight is the same as repeating the sample, and class weights scale the loss like
scikit-learn's (they do not rescale the regularisation).

Inference runs in float64 numpy (linear heads) or float64 torch (MLP), so predictions of a row do
not depend on the other rows in the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ..checkpoint import flatten_optimizer, unflatten_optimizer
from ..errors import UsageError
from ..params import check_int, check_number, param_error

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    _sk_validate_data = None


def validate_data(est: BaseEstimator, X: Any, y: Any = "no_validation", reset: bool = True, **kw: Any) -> Any:
    """scikit-learn's ``validate_data`` (1.6+) or the estimator method of older versions."""
    if _sk_validate_data is not None:
        return _sk_validate_data(est, X, y, reset=reset, **kw)
    return est._validate_data(X, y, reset=reset, **kw)  # pragma: no cover


#: Below this many multiply-adds per step, torch runs single-threaded: for tiny matrices the
#: thread pool costs more than it gains, and on a loaded machine its barriers stall each step.
SMALL_WORK = 50_000_000


@contextlib.contextmanager
def threads_for(work: int) -> Iterator[None]:
    """Run small torch work on one thread (restoring the thread count afterwards)."""
    n = torch.get_num_threads()
    if work >= SMALL_WORK or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class TorchHead(ClassifierMixin, BaseEstimator):
    """Base class: subclasses define the parameters, the network and the loss."""

    #: whether the head exposes ``predict_proba`` (softmax / sigmoid outputs)
    _probabilistic = True
    #: what ``train`` needs to know about a head kind (no per-name tables elsewhere):
    #: the learning rate ``train`` uses unless told, and the extra ``train`` parameters it takes
    default_learning_rate: float = 1e-3
    train_params: tuple[str, ...] = ()

    @classmethod
    def exact_estimator(cls, C: float | None, class_weight: Any, seed: int, params: dict[str, Any]) -> Any:
        """The scikit-learn estimator that fits this head in memory (``solver="exact"``); None when there is none.

        ``C`` is ``1 / (alpha * n_train)`` (None: no penalty); ``params`` the head's own parameters.
        """
        return None

    @classmethod
    def has_exact_solver(cls) -> bool:
        """Whether ``solver="exact"`` can fit this head (its :meth:`exact_estimator` gives an estimator)."""
        return cls.exact_estimator(1.0, None, 0, cls().get_params()) is not None

    # ----------------------------------------------------------------- subclass hooks
    def _n_outputs(self, n_classes: int) -> int:
        raise NotImplementedError

    def _init_params(self, n_features: int, n_outputs: int, gen: torch.Generator) -> list[torch.Tensor]:
        raise NotImplementedError

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (no reduction) of outputs ``z`` for class indices ``target``."""
        raise NotImplementedError

    def _penalized(self) -> list[torch.Tensor]:
        """Parameters under the L2 penalty (weights, not biases)."""
        raise NotImplementedError

    def _decision64(self, X: np.ndarray) -> np.ndarray:
        """Raw outputs in float64 for validated X: N x n_outputs."""
        raise NotImplementedError

    def _tensor_names(self) -> list[str]:
        raise NotImplementedError

    def _check_extra_params(self) -> None:
        """Validate subclass-specific parameters."""

    # ----------------------------------------------------------------- validation
    def _check_params(self) -> None:
        owner = type(self).__name__
        check_number(self.alpha, "alpha", minimum=0, where=owner)
        check_number(self.learning_rate, "learning_rate", minimum=0, min_open=True, where=owner)
        check_int(self.batch_size, "batch_size", minimum=1, where=owner)
        check_int(self.max_iter, "max_iter", minimum=1, where=owner)
        check_number(self.tol, "tol", minimum=0, optional=True, where=owner)
        check_int(self.n_iter_no_change, "n_iter_no_change", minimum=1, where=owner)
        cw = self.class_weight
        if not (cw is None or cw == "balanced" or isinstance(cw, Mapping)):
            raise param_error("class_weight", "None, 'balanced' or a dict {class: weight}", cw, owner)
        if not isinstance(self.device, str):
            raise param_error("device", "a torch device name such as 'cpu' or 'cuda'", self.device, owner)
        self._check_extra_params()

    # ----------------------------------------------------------------- state
    def _device(self) -> torch.device:
        return torch.device(self.device)

    def _reset(self, n_features: int, classes: np.ndarray) -> None:
        classes = np.asarray(classes)
        if classes.ndim != 1:
            raise UsageError(
                f"The 'classes' parameter of {type(self).__name__} must be 1-D; got shape {classes.shape} instead."
            )
        uniq = np.unique(classes)
        if len(uniq) != len(classes):
            raise UsageError(
                f"The 'classes' parameter of {type(self).__name__} must not repeat a class; got {list(classes)!r} instead."
            )
        if len(uniq) < 2:
            raise UsageError(f"{type(self).__name__} needs at least 2 classes to train; got 1 class ({uniq.tolist()!r}).")
        self.classes_ = uniq
        rs = check_random_state(self.random_state)
        self._rng = np.random.RandomState(rs.randint(np.iinfo(np.int32).max))
        gen = torch.Generator().manual_seed(int(rs.randint(np.iinfo(np.int32).max)))
        params = self._init_params(n_features, self._n_outputs(len(uniq)), gen)
        self._params = [p.to(self._device()).requires_grad_(True) for p in params]
        self._optimizer = torch.optim.Adam(self._params, lr=float(self.learning_rate))
        self.t_ = 0
        self.n_iter_ = 0

    def _class_weight_vector(self, y_idx: np.ndarray | None) -> np.ndarray:
        cw = self.class_weight
        if cw is None:
            return np.ones(len(self.classes_))
        if cw == "balanced":
            if y_idx is None:
                raise UsageError(
                    f"class_weight='balanced' is not supported by {type(self).__name__}.partial_fit: the class "
                    "frequencies of one batch are not those of the data. Compute the weights over all the data "
                    "(sklearn.utils.class_weight.compute_class_weight) and pass them as a dict; deepfeat.train "
                    "does this from its statistics pass."
                )
            present = np.unique(y_idx)
            w = np.ones(len(self.classes_))
            w[present] = compute_class_weight("balanced", classes=present, y=y_idx)
            return w
        w = np.ones(len(self.classes_))
        known = {c: i for i, c in enumerate(self.classes_.tolist())}
        for c, v in cw.items():
            key = c.item() if isinstance(c, np.generic) else c
            if key not in known:
                raise UsageError(
                    f"The 'class_weight' parameter of {type(self).__name__} names the class {c!r}, "
                    f"which is not one of the classes {self.classes_.tolist()!r}."
                )
            w[known[key]] = float(v)
        return w

    def _encode(self, y: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if np.any(bad):
            unknown = sorted(set(np.asarray(y)[bad].tolist()))[:5]
            raise UsageError(
                f"The labels {unknown!r} are not among the classes {self.classes_.tolist()!r} given "
                f"to the first partial_fit of {type(self).__name__}."
            )
        return idx

    def _sample_weight(self, sample_weight: Any, X: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        if sample_weight is None:
            return np.ones(n)
        sw = np.asarray(sample_weight, dtype=np.float64)
        if sw.ndim == 0:
            sw = np.full(n, float(sw))
        if sw.ndim != 1 or sw.shape[0] != n:
            raise UsageError(
                f"The 'sample_weight' parameter of {type(self).__name__} must have shape ({n},); "
                f"got shape {sw.shape} instead."
            )
        if not np.all(np.isfinite(sw)) or np.any(sw < 0):
            raise UsageError(f"The 'sample_weight' parameter of {type(self).__name__} must be finite and >= 0.")
        if not np.any(sw > 0):
            raise UsageError("Sample weights must contain at least one non-zero number.")
        return sw

    # ----------------------------------------------------------------- optimisation
    def _step_work(self) -> int:
        return int(self.batch_size) * sum(p.numel() for p in self._params)

    def _step(self, X: torch.Tensor, target: torch.Tensor, w: torch.Tensor, norm: float) -> float:
        """One Adam step on a mini-batch; returns the (unregularised) weighted mean loss."""
        self._optimizer.zero_grad(set_to_none=True)
        z = self._forward(X)
        data_loss = (self._loss(z, target) * w).sum() / norm
        obj = data_loss
        if self.alpha > 0:
            obj = obj + 0.5 * float(self.alpha) * sum((p * p).sum() for p in self._penalized())
        obj.backward()
        self._optimizer.step()
        self.t_ += 1
        return float(data_loss.detach())

    def _epoch(self, X: np.ndarray, y_idx: np.ndarray, sw: np.ndarray, cw: np.ndarray, shuffle: bool) -> float:
        """One pass over (X, y) in mini-batches; returns the sample-weighted mean loss."""
        n = X.shape[0]
        order = self._rng.permutation(n) if shuffle else np.arange(n)
        dev = self._device()
        total, weight = 0.0, 0.0
        bs = int(self.batch_size)
        for start in range(0, n, bs):
            sel = order[start : start + bs]
            s = sw[sel]
            norm = float(s.sum())
            if norm <= 0:
                continue
            xb = torch.from_numpy(np.array(X[sel], dtype=np.float32)).to(dev)
            tb = torch.from_numpy(y_idx[sel].astype(np.int64)).to(dev)
            wb = torch.from_numpy((cw[y_idx[sel]] * s).astype(np.float32)).to(dev)
            loss = self._step(xb, tb, wb, norm)
            total += loss * norm
            weight += norm
        return total / weight if weight else float("nan")

    # ----------------------------------------------------------------- public API
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "TorchHead":
        """Train from scratch for up to ``max_iter`` epochs over (X, y) held in memory."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], reset=True)
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise UsageError(f"{type(self).__name__} needs at least 2 classes to train; got 1 class ({classes.tolist()!r}).")
        sw = self._sample_weight(sample_weight, X)
        self._reset(X.shape[1], classes)
        y_idx = self._encode(y)
        cw = self._class_weight_vector(y_idx)
        best = np.inf
        no_improve = 0
        self.loss_curve_ = []
        for _ in range(int(self.max_iter)):
            with threads_for(self._step_work()):
                loss = self._epoch(X, y_idx, sw, cw, shuffle=True)
            self.n_iter_ += 1
            self.loss_curve_.append(loss)
            if self.tol is not None:
                if loss > best - float(self.tol):
                    no_improve += 1
                else:
                    no_improve = 0
                best = min(best, loss)
                if no_improve >= int(self.n_iter_no_change):
                    break
        self.loss_ = self.loss_curve_[-1]
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> "TorchHead":
        """One pass over the batch (X, y), continuing from the current state.

        ``classes`` (every class of the whole data) is required on the first call.
        """
        first = not hasattr(self, "classes_")
        if first:
            self._check_params()
            if classes is None:
                raise UsageError(
                    f"The 'classes' parameter of {type(self).__name__}.partial_fit must be given on "
                    "the first call (every class of the whole data); got None instead."
                )
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], reset=first)
        if first:  # later batches are checked against the fixed classes by _encode
            check_classification_targets(y)
            self._reset(X.shape[1], np.asarray(classes))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise UsageError(
                f"The 'classes' parameter of {type(self).__name__}.partial_fit must be the same on "
                f"every call; got {list(classes)!r} instead of {self.classes_.tolist()!r}."
            )
        sw = self._sample_weight(sample_weight, X)
        y_idx = self._encode(y)
        cw = self._class_weight_vector(None)
        with threads_for(self._step_work()):
            self.loss_ = self._epoch(X, y_idx, sw, cw, shuffle=True)
        self.n_iter_ += 1
        return self

    def decision_outputs(self, X: Any) -> np.ndarray:
        """Raw outputs (N x n_outputs, float64): logits for the logistic head and the MLP."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._decision64(X)

    def predict(self, X: Any) -> np.ndarray:
        z = self.decision_outputs(X)
        if z.shape[1] == 1:
            return self.classes_[(z[:, 0] > 0).astype(int)]
        return self.classes_[np.argmax(z, axis=1)]

    def loss_on(self, X: Any, y: Any) -> float:
        """Mean (unregularised, unweighted) loss of the head on labelled data."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        y_idx = self._encode(np.asarray(y))
        with torch.no_grad():
            z = torch.from_numpy(self._decision64(X))
            return float(self._loss(z, torch.from_numpy(y_idx.astype(np.int64))).mean())

    def set_lr_scale(self, factor: float) -> None:
        """Scale the optimiser's step size to ``learning_rate * factor`` (learning-rate schedules)."""
        check_is_fitted(self, "classes_")
        for group in self._optimizer.param_groups:
            group["lr"] = float(self.learning_rate) * float(factor)

    # ----------------------------------------------------------------- snapshots and export
    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the learned parameters: early stopping keeps the best epoch's (part of the head contract).

        Example:
            >>> best = head.snapshot()      # doctest: +SKIP
            >>> head.restore(best)          # doctest: +SKIP
        """
        return [p.detach().clone() for p in self._params]

    def restore(self, snap: list[torch.Tensor]) -> None:
        """Put back the parameters of a :meth:`snapshot`."""
        with torch.no_grad():
            for p, s in zip(self._params, snap):
                p.copy_(s)

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything ``partial_fit`` continues from: weights, optimizer state, step counters, RNG states.

        Returns (named tensors, JSON-friendly document); :meth:`load_training_state` restores
        them so that training continues exactly as if it had not stopped.
        """
        check_is_fitted(self, "classes_")
        tensors = {f"param.{n}": p.detach() for n, p in zip(self._tensor_names(), self._params)}
        opt_tensors, opt_rest = flatten_optimizer(self._optimizer.state_dict())
        tensors.update(opt_tensors)
        kind, keys, pos, has_gauss, cached = self._rng.get_state()
        tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        gen = getattr(self, "_dropout_gen", None)
        if gen is not None:
            tensors["rng.dropout"] = gen.get_state()
        doc = {
            "optimizer": opt_rest,
            "t": int(self.t_),
            "n_iter": int(self.n_iter_),
            "loss": float(getattr(self, "loss_", float("nan"))),
            "rng": [kind, int(pos), int(has_gauss), float(cached)],
            "classes": self.classes_.tolist(),
            "n_features": int(self.n_features_in_),
        }
        return tensors, doc

    def load_training_state(self, tensors: Mapping[str, torch.Tensor], doc: Mapping[str, Any]) -> "TorchHead":
        """Restore a state from :meth:`training_state` (the head's parameters must be the same)."""
        self._check_params()
        self._reset(int(doc["n_features"]), np.asarray(doc["classes"]))
        self.n_features_in_ = int(doc["n_features"])
        with torch.no_grad():
            for n, p in zip(self._tensor_names(), self._params):
                saved = tensors[f"param.{n}"]
                if tuple(saved.shape) != tuple(p.shape):
                    raise UsageError(
                        f"The saved head tensor {n!r} has shape {tuple(saved.shape)}, expected {tuple(p.shape)}."
                    )
                p.copy_(saved)
        self._optimizer.load_state_dict(unflatten_optimizer(dict(tensors), doc["optimizer"]))
        kind, pos, has_gauss, cached = doc["rng"]
        self._rng.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
        if "rng.dropout" in tensors and getattr(self, "_dropout_gen", None) is not None:
            self._dropout_gen.set_state(tensors["rng.dropout"])
        self.t_, self.n_iter_, self.loss_ = int(doc["t"]), int(doc["n_iter"]), float(doc["loss"])
        return self

    def export_tensors(self) -> dict[str, np.ndarray]:
        """The learned parameters as named float32 arrays (for the model bundle)."""
        check_is_fitted(self, "classes_")
        return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in zip(self._tensor_names(), self._params)}

    @classmethod
    def from_tensors(
        cls, params: Mapping[str, Any], tensors: Mapping[str, np.ndarray], classes: Sequence[Any], n_features: int
    ) -> "TorchHead":
        """Rebuild a fitted head from :meth:`export_tensors` output (no training state)."""
        head = cls(**params)
        head._check_params()
        head._reset(int(n_features), np.asarray(classes))
        names = head._tensor_names()
        missing = [n for n in names if n not in tensors]
        if missing:
            raise UsageError(f"The head tensors are incomplete: missing {', '.join(missing)}.")
        with torch.no_grad():
            for n, p in zip(names, head._params):
                arr = np.asarray(tensors[n])
                if tuple(arr.shape) != tuple(p.shape):
                    raise UsageError(f"The head tensor {n!r} has shape {arr.shape}, expected {tuple(p.shape)}.")
                p.copy_(torch.from_numpy(arr.astype(np.float32)))
        head.n_features_in_ = int(n_features)
        head.n_iter_ = 0
        return head

    def hyperparameters(self) -> dict[str, Any]:
        """``get_params()`` as JSON-friendly values."""
        out: dict[str, Any] = {}
        for k, v in self.get_params(deep=False).items():
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = {str(kk): float(vv) for kk, vv in v.items()}
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        return out

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags
