"""Linear heads trained by streaming mini-batches: multinomial logistic regression and a linear SVM.

Both follow scikit-learn's estimator contract and expose ``coef_`` (``n_outputs x n_features``)
and ``intercept_`` in the same layout as scikit-learn's ``LogisticRegression`` / ``LinearSVC``:
one row for two classes (the positive class is ``classes_[1]``), one row per class otherwise.

Example:
    >>> import numpy as np
    >>> from deepfeat.heads import LogisticHead
    >>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]])
    >>> head = LogisticHead(learning_rate=0.1, random_state=0).fit(X, ["a", "b", "a", "b"])
    >>> head.predict([[0.0, 1.0]]).tolist()
    ['a']
    >>> head.predict_proba([[0.0, 1.0]]).shape
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.validation import check_is_fitted

from ..params import check_choice
from ._base import TorchHead


class _LinearHead(TorchHead):
    def _n_outputs(self, n_classes: int) -> int:
        return 1 if n_classes == 2 else n_classes

    def _init_params(self, n_features: int, n_outputs: int, gen: torch.Generator) -> list[torch.Tensor]:
        # Convex objective: a zero start is deterministic and as good as any.
        return [torch.zeros(n_outputs, n_features), torch.zeros(n_outputs)]

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        w, b = self._params
        z = X @ w.T
        return z + b if self.fit_intercept else z

    def _penalized(self) -> list[torch.Tensor]:
        return [self._params[0]]

    def _tensor_names(self) -> list[str]:
        return ["coef", "intercept"]

    def _decision64(self, X: np.ndarray) -> np.ndarray:
        w = self.coef_.astype(np.float64)
        z = np.asarray(X, dtype=np.float64) @ w.T
        if self.fit_intercept:
            z += self.intercept_.astype(np.float64)
        return z

    @property
    def coef_(self) -> np.ndarray:
        check_is_fitted(self, "classes_")
        return self._params[0].detach().cpu().numpy()

    @property
    def intercept_(self) -> np.ndarray:
        check_is_fitted(self, "classes_")
        return self._params[1].detach().cpu().numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed scores: shape (n,) for two classes (positive = ``classes_[1]``), else (n, n_classes)."""
        z = self.decision_outputs(X)
        return z[:, 0] if z.shape[1] == 1 else z

    @classmethod
    def from_linear(
        cls, coef: np.ndarray, intercept: np.ndarray, classes: Any, params: Mapping[str, Any] | None = None
    ) -> "_LinearHead":
        """A fitted head from the ``coef_``/``intercept_`` of an equivalent scikit-learn model."""
        coef = np.atleast_2d(np.asarray(coef, dtype=np.float32))
        intercept = np.broadcast_to(np.asarray(intercept, dtype=np.float32), (coef.shape[0],)).copy()
        return cls.from_tensors(dict(params or {}), {"coef": coef, "intercept": intercept}, classes, coef.shape[1])


class LogisticHead(_LinearHead):
    """Multinomial logistic regression (binary: sigmoid) trained by mini-batch Adam.

    ``solver="exact"``: scikit-learn's ``LogisticRegression`` on the same objective.

    Parameters:
        alpha: L2 penalty on the weights (objective: mean log-loss + alpha/2 ||W||^2; the same
            model as scikit-learn's ``LogisticRegression(C=1 / (alpha * n_samples))``).
        learning_rate: Adam step size.
        batch_size: rows per optimiser step.
        max_iter: epochs of ``fit``; ``tol`` / ``n_iter_no_change`` stop it earlier on the training loss.
        class_weight: None, ``"balanced"`` (``fit`` only) or ``{class: weight}``.
        random_state: seeds the shuffling (and nothing else: the start is zero).
        device: torch device used for training.
    """

    @classmethod
    def exact_estimator(cls, C: float | None, class_weight: Any, seed: int, params: dict[str, Any]) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=np.inf if C is None else C, max_iter=2000, class_weight=class_weight)

    def __init__(
        self,
        *,
        alpha: float = 1e-4,
        learning_rate: float = 1e-2,
        batch_size: int = 256,
        max_iter: int = 100,
        tol: float | None = 1e-4,
        n_iter_no_change: int = 5,
        class_weight: Any = None,
        fit_intercept: bool = True,
        random_state: Any = None,
        device: str = "cpu",
    ) -> None:
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.fit_intercept = fit_intercept
        self.random_state = random_state
        self.device = device

    def _loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if z.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(z[:, 0], target.to(z.dtype), reduction="none")
        return F.cross_entropy(z, target, reduction="none")

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        z = self.decision_outputs(X)
        if z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1.0 - p, p])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        z = self.decision_outputs(X)
        if z.shape[1] == 1:
            z = np.column_stack([np.zeros(len(z)), z[:, 0]])
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class LinearSVMHead(_LinearHead):
    """Linear SVM trained by mini-batch Adam on the hinge loss.

    Parameters (besides those of :class:`LogisticHead`):
        loss: ``"hinge"`` or ``"squared_hinge"`` (scikit-learn ``LinearSVC``'s default).
        multi_class: ``"ovr"`` (one-vs-rest, ``LinearSVC``'s default) or ``"crammer_singer"``
            (the multiclass hinge ``max_j (1 + s_j - s_y)_+``).

    There is no ``predict_proba``: use ``decision_function`` for scores.
    """

    _probabilistic = False

    @classmethod
    def exact_estimator(cls, C: float | None, class_weight: Any, seed: int, params: dict[str, Any]) -> Any:
        from sklearn.svm import LinearSVC

        return LinearSVC(
            C=1e6 if C is None else C,
            loss=params["loss"],
            multi_class=params["multi_class"],
            class_weight=class_weight,
            max_iter=5000,
            random_state=seed,
            dual="auto" if params["loss"] == "squared_hinge" else True,
        )

    def __init__(
        self,
        *,
        alpha: float = 1e-4,
        learning_rate: float = 1e-2,
        batch_size: int = 256,
        max_iter: int = 100,
        tol: float | None = 1e-4,
        n_iter_no_change: int = 5,
        class_weight: Any = None,
        fit_intercept: bool = True,
        loss: str = "hinge",
        multi_class: str = "ovr",
        random_state: Any = None,
        device: str = "cpu",
    ) -> None:
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.fit_intercept = fit_intercept
        self.loss = loss
        self.multi_class = multi_class
        self.random_state = random_state
        self.device = device

    def _check_extra_params(self) -> None:
        check_choice(self.loss, "loss", ("hinge", "squared_hinge"), where=type(self).__name__)
        check_choice(self.multi_class, "multi_class", ("ovr", "crammer_singer"), where=type(self).__name__)

    def _loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if z.shape[1] == 1:
            sign = target.to(z.dtype) * 2 - 1
            h = F.relu(1 - sign * z[:, 0])
        elif self.multi_class == "ovr":
            sign = F.one_hot(target, z.shape[1]).to(z.dtype) * 2 - 1
            h = F.relu(1 - sign * z)
            return (h * h if self.loss == "squared_hinge" else h).sum(dim=1)
        else:
            zy = z.gather(1, target[:, None])
            m = F.relu(1 + z - zy)
            m = m.scatter(1, target[:, None], 0.0)
            h = m.max(dim=1).values
        return h * h if self.loss == "squared_hinge" else h
