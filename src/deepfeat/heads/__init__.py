"""Classifier heads trained on stored features, and the streaming scaler.

* :class:`LogisticHead` -- multinomial logistic regression (``head="logreg"``);
* :class:`LinearSVMHead` -- linear SVM, hinge or squared hinge, one-vs-rest or Crammer-Singer (``head="svm"``);
* :class:`MLPHead` -- fully connected network with configurable hidden sizes (``head="mlp"``);
* :class:`StreamingScaler` -- per-feature mean/std in one streaming pass.

All follow scikit-learn's estimator contract (``fit``, ``partial_fit(X, y, classes=...)``,
``predict``, ``predict_proba`` / ``decision_function``, ``score``).
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .linear import LinearSVMHead, LogisticHead
from .mlp import MLPHead
from .scaler import StreamingScaler

#: ``head=`` names of :func:`deepfeat.train` and the bundle format -> head class
HEADS: Registry[type[Any]] = Registry("head")
HEADS.register(LogisticHead, name="logreg")
HEADS.register(LinearSVMHead, name="svm")
HEADS.register(MLPHead, name="mlp")
#: add a head class: ``register_head(MyHead, name="mine")``
register_head = HEADS.register


def expected_failed_checks(estimator: Any) -> dict[str, str]:
    """scikit-learn estimator checks the heads are known not to pass, with the reason.

    Used as ``parametrize_with_checks(..., expected_failed_checks=expected_failed_checks)``.
    """
    if isinstance(estimator, (LogisticHead, LinearSVMHead, MLPHead)):
        return {
            "check_sample_weight_equivalence_on_dense_data": (
                "float32 optimisation: weighting and repeating samples give the same objective, and the two fits "
                "agree to float32 round-off (~2e-7 relative); the check asks for rtol=1e-7"
            ),
        }
    return {}


__all__ = ["HEADS", "register_head", "LinearSVMHead", "LogisticHead", "MLPHead", "StreamingScaler", "expected_failed_checks"]
