"""A multilayer perceptron head (torch), trained by mini-batch Adam, with scikit-learn's contract.

``hidden=(256, 16)`` on 100,352 unpooled features is the seed project's 100352-256-16-2 network;
:func:`deepfeat.train` trains it from disk with ``partial_fit``.

Example:
    >>> import numpy as np
    >>> from deepfeat.heads import MLPHead
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(20, 3) - 2, rng.randn(20, 3) + 2]
    >>> y = np.r_[np.zeros(20), np.ones(20)]
    >>> MLPHead(hidden=(8,), random_state=0).fit(X, y).score(X, y)
    1.0
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.validation import check_is_fitted

from ..params import check_choice, check_number, is_int, param_error
from ._base import TorchHead, threads_for

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}
#: Above this many first-layer weights, inference runs in float32 (a float64 copy would be too big).
_FLOAT64_INFERENCE_LIMIT = 4_000_000


class MLPHead(TorchHead):
    """Fully connected network: ``n_features -> hidden[0] -> ... -> n_classes`` (softmax).

    Parameters:
        hidden: hidden layer sizes, e.g. ``(256,)`` or ``(256, 16)``; ``()`` is multinomial logistic regression.
        activation: ``relu``, ``tanh`` or ``gelu``.
        dropout: dropout probability after each hidden layer (training only).
        alpha: L2 penalty on the weights; ``learning_rate``, ``batch_size``, ``max_iter``, ``tol``,
            ``n_iter_no_change``, ``class_weight``, ``random_state`` and ``device`` as in
            :class:`~deepfeat.heads.LogisticHead`. ``random_state`` seeds the initial weights,
            the shuffling and the dropout masks.
    """

    train_params = ("hidden",)

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (256,),
        activation: str = "relu",
        dropout: float = 0.0,
        alpha: float = 1e-4,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        max_iter: int = 200,
        tol: float | None = 1e-4,
        n_iter_no_change: int = 10,
        class_weight: Any = None,
        random_state: Any = None,
        device: str = "cpu",
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.random_state = random_state
        self.device = device

    def _check_extra_params(self) -> None:
        owner = type(self).__name__
        h = self.hidden
        if is_int(h):
            h = (h,)
        if not isinstance(h, (tuple, list)) or not all(is_int(v) and v >= 1 for v in h):
            raise param_error("hidden", "a tuple of positive ints such as (256,) or (256, 16)", self.hidden, owner)
        check_choice(self.activation, "activation", _ACTIVATIONS, where=owner)
        check_number(self.dropout, "dropout", minimum=0, maximum=1, max_open=True, where=owner)

    def _sizes(self) -> list[int]:
        h = self.hidden
        return [int(h)] if isinstance(h, numbers.Integral) else [int(v) for v in h]

    def _n_outputs(self, n_classes: int) -> int:
        return n_classes

    def _init_params(self, n_features: int, n_outputs: int, gen: torch.Generator) -> list[torch.Tensor]:
        sizes = [n_features, *self._sizes(), n_outputs]
        params: list[torch.Tensor] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
            params.append((torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound)
            params.append((torch.rand(fan_out, generator=gen) * 2 - 1) * bound)
        self._dropout_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        return params

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        act = _ACTIVATIONS[self.activation]
        n_layers = len(self._params) // 2
        h = X
        for i in range(n_layers):
            w, b = self._params[2 * i], self._params[2 * i + 1]
            h = F.linear(h, w, b)
            if i < n_layers - 1:
                h = act(h)
                if self.dropout > 0:
                    keep = (torch.rand(h.shape, generator=self._dropout_gen) >= self.dropout).to(h.device)
                    h = h * keep / (1.0 - self.dropout)
        return h

    def _loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, target, reduction="none")

    def _penalized(self) -> list[torch.Tensor]:
        return self._params[0::2]

    def _tensor_names(self) -> list[str]:
        n_layers = len(self._params) // 2
        return [f"layers.{i}.{kind}" for i in range(n_layers) for kind in ("weight", "bias")]

    def _decision64(self, X: np.ndarray) -> np.ndarray:
        act = _ACTIVATIONS[self.activation]
        n_layers = len(self._params) // 2
        exact = self._params[0].numel() <= _FLOAT64_INFERENCE_LIMIT
        dtype = torch.float64 if exact else torch.float32
        work = X.shape[0] * sum(p.numel() for p in self._params)
        with torch.no_grad(), threads_for(work):
            h = torch.from_numpy(np.asarray(X, dtype=np.float64 if exact else np.float32))
            for i in range(n_layers):
                w = self._params[2 * i].detach().cpu().to(dtype)
                b = self._params[2 * i + 1].detach().cpu().to(dtype)
                h = F.linear(h, w, b)
                if i < n_layers - 1:
                    h = act(h)
            return h.to(torch.float64).numpy()

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices, ``n_in x n_out`` each (scikit-learn ``MLPClassifier``'s layout)."""
        check_is_fitted(self, "classes_")
        return [p.detach().cpu().numpy().T for p in self._params[0::2]]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        check_is_fitted(self, "classes_")
        return [p.detach().cpu().numpy() for p in self._params[1::2]]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (softmax), columns in the order of ``classes_``."""
        z = self.decision_outputs(X)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        z = self.decision_outputs(X)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
