"""The heads and the streaming scaler: scikit-learn's estimator checks and numeric references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from deepfeat.errors import UsageError
from deepfeat.heads import LinearSVMHead, LogisticHead, MLPHead, StreamingScaler, expected_failed_checks


@parametrize_with_checks(
    [LogisticHead(), LinearSVMHead(), MLPHead(hidden=(16,)), StreamingScaler()],
    expected_failed_checks=expected_failed_checks,
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(
        n_samples=400, n_features=20, n_informative=8, n_classes=4, n_clusters_per_class=1, class_sep=1.0, random_state=0
    )
    return StandardScaler().fit_transform(X), y


# ----------------------------------------------------------------------------- scaler
def test_scaler_matches_numpy_whatever_the_batches():
    rng = np.random.RandomState(0)
    X = rng.randn(1000, 6) * [1, 10, 1e-3, 1e4, 5, 0] + [0, -3, 7, 1e5, 2, 4.5]
    s = StreamingScaler()
    for part in np.array_split(X, [1, 2, 300, 301, 999]):
        s.partial_fit(part)
    np.testing.assert_allclose(s.mean_, X.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.var_, X.var(axis=0), rtol=1e-9, atol=1e-12)
    assert s.n_samples_seen_ == 1000
    assert s.scale_[5] == 1.0  # zero variance: scale 1, never a division by 0
    Z = s.transform(X.astype(np.float32))
    assert Z.dtype == np.float32 and np.isfinite(Z).all()
    np.testing.assert_array_equal(Z[:, 5], 0)
    np.testing.assert_allclose(Z.std(axis=0)[:5], 1, rtol=1e-3)
    np.testing.assert_allclose(s.inverse_transform(s.transform(X)), X, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- linear heads
def test_logistic_head_reaches_sklearns_optimum(blobs):
    X, y = blobs
    alpha = 1e-2
    ref = LogisticRegression(C=1 / (alpha * len(y)), tol=1e-10, max_iter=5000).fit(X, y)
    # full batches: Adam on the same objective must land on scikit-learn's optimum
    head = LogisticHead(alpha=alpha, learning_rate=3e-2, batch_size=len(y), max_iter=1000, tol=None, random_state=0).fit(
        X, y
    )
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    np.testing.assert_allclose(head.coef_, ref.coef_, rtol=1e-3, atol=1e-3)
    assert head.coef_.shape == (4, 20) and head.intercept_.shape == (4,)


def test_binary_logistic_head_has_sklearns_layout_and_values():
    X, y = make_blobs(n_samples=200, centers=2, cluster_std=3.0, random_state=1)
    X = StandardScaler().fit_transform(X)
    labels = np.where(y == 1, "yes", "no")
    alpha = 1e-2
    ref = LogisticRegression(C=1 / (alpha * len(y)), tol=1e-10, max_iter=5000).fit(X, labels)
    head = LogisticHead(alpha=alpha, learning_rate=3e-2, batch_size=len(y), max_iter=1000, tol=None, random_state=0).fit(
        X, labels
    )
    assert head.coef_.shape == ref.coef_.shape == (1, 2)
    assert head.classes_.tolist() == ["no", "yes"]
    np.testing.assert_allclose(head.coef_, ref.coef_, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    assert head.decision_function(X).shape == (200,)


@pytest.mark.parametrize("multi_class", ["ovr", "crammer_singer"])
def test_svm_head_agrees_with_linear_svc(blobs, multi_class):
    X, y = blobs
    alpha = 1e-2
    ref = LinearSVC(
        C=1 / (alpha * len(y)), loss="squared_hinge", multi_class=multi_class, max_iter=20000, random_state=0
    ).fit(X, y)
    head = LinearSVMHead(
        alpha=alpha,
        loss="squared_hinge",
        multi_class=multi_class,
        learning_rate=3e-2,
        batch_size=len(y),
        max_iter=1000,
        tol=None,
        random_state=0,
    ).fit(X, y)
    assert not hasattr(head, "predict_proba")
    assert head.decision_function(X).shape == (400, 4)
    assert np.mean(head.predict(X) == ref.predict(X)) > 0.95
    assert abs(head.score(X, y) - ref.score(X, y)) < 0.03


def test_partial_fit_streams_to_the_same_quality(blobs):
    X, y = blobs
    head = LogisticHead(batch_size=32, random_state=0)
    with pytest.raises(UsageError, match="'classes' parameter of LogisticHead.partial_fit must be given"):
        head.partial_fit(X[:10], y[:10])
    for epoch in range(20):
        for part in np.array_split(np.random.RandomState(epoch).permutation(len(y)), 8):
            head.partial_fit(X[part], y[part], classes=[0, 1, 2, 3])
    full = LogisticHead(batch_size=32, max_iter=20, tol=None, random_state=0).fit(X, y)
    assert head.score(X, y) > 0.8 and abs(head.score(X, y) - full.score(X, y)) < 0.05
    with pytest.raises(UsageError, match=r"labels \[7\] are not among the classes"):
        head.partial_fit(X[:2], [7, 7])
    with pytest.raises(ValueError, match="features"):
        head.partial_fit(X[:5, :3], y[:5])


def test_class_weight_balanced_and_dict(blobs):
    X, y = blobs
    keep = (y != 0) | (np.arange(len(y)) % 10 == 0)  # class 0 becomes rare
    X, y = X[keep], y[keep]
    plain = LogisticHead(max_iter=50, random_state=0).fit(X, y)
    balanced = LogisticHead(max_iter=50, random_state=0, class_weight="balanced").fit(X, y)
    recall = lambda m: np.mean(m.predict(X[y == 0]) == 0)  # noqa: E731
    assert recall(balanced) >= recall(plain)
    counts = np.bincount(y)
    as_dict = {c: len(y) / (4 * counts[c]) for c in range(4)}
    same = LogisticHead(max_iter=50, random_state=0, class_weight=as_dict).fit(X, y)
    np.testing.assert_allclose(same.coef_, balanced.coef_, rtol=1e-6, atol=1e-7)
    with pytest.raises(UsageError, match="'balanced' is not supported by LogisticHead.partial_fit"):
        LogisticHead(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(UsageError, match="names the class 9"):
        LogisticHead(class_weight={9: 2.0}).fit(X, y)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(alpha=-1), "The 'alpha' parameter of LogisticHead must be a float >= 0; got -1 instead."),
        (dict(batch_size=0), "The 'batch_size' parameter of LogisticHead must be an int >= 1; got 0 instead."),
        (dict(class_weight="auto"), "The 'class_weight' parameter of LogisticHead must be None, 'balanced' or a dict"),
    ],
)
def test_parameter_errors_have_one_format(blobs, bad, message):
    X, y = blobs
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        LogisticHead(**bad).fit(X, y)


def test_svm_and_mlp_parameter_errors(blobs):
    X, y = blobs
    with pytest.raises(
        UsageError, match="The 'loss' parameter of LinearSVMHead must be one of 'hinge', 'squared_hinge'; got 'log' instead."
    ):
        LinearSVMHead(loss="log").fit(X, y)
    with pytest.raises(UsageError, match="The 'hidden' parameter of MLPHead must be a tuple of positive ints"):
        MLPHead(hidden=(0,)).fit(X, y)
    with pytest.raises(UsageError, match="needs at least 2 classes to train; got 1 class"):
        LogisticHead().fit(X, np.zeros(len(X)))


# ----------------------------------------------------------------------------- MLP
def test_mlp_two_hidden_layers_learns_xor():
    rng = np.random.RandomState(0)
    X = rng.uniform(-1, 1, size=(600, 2))
    y = np.where((X[:, 0] > 0) ^ (X[:, 1] > 0), "odd", "even")  # not linearly separable
    mlp = MLPHead(hidden=(32, 16), learning_rate=1e-2, batch_size=64, max_iter=200, random_state=0).fit(X, y)
    linear = LogisticHead(max_iter=100, random_state=0).fit(X, y)
    assert mlp.score(X, y) > 0.93 and linear.score(X, y) < 0.75
    assert [w.shape for w in mlp.coefs_] == [(2, 32), (32, 16), (16, 2)]
    np.testing.assert_allclose(mlp.predict_proba(X).sum(axis=1), 1.0)


def test_mlp_is_deterministic_with_a_seed_even_with_dropout(blobs):
    X, y = blobs
    a = MLPHead(hidden=(8,), dropout=0.2, max_iter=5, random_state=3).fit(X, y)
    b = MLPHead(hidden=(8,), dropout=0.2, max_iter=5, random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


@pytest.mark.parametrize("head", [LogisticHead(max_iter=5), LinearSVMHead(max_iter=5), MLPHead(hidden=(8, 4), max_iter=5)])
def test_export_and_rebuild_give_identical_outputs(blobs, head):
    X, y = blobs
    head.fit(X, y)
    tensors = head.export_tensors()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in tensors.values())
    again = type(head).from_tensors(head.hyperparameters(), tensors, head.classes_, X.shape[1])
    np.testing.assert_array_equal(again.decision_outputs(X), head.decision_outputs(X))
    np.testing.assert_array_equal(again.predict(X), head.predict(X))


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticHead(batch_size=16, random_state=3),
        lambda: LinearSVMHead(batch_size=16, random_state=3),
        lambda: MLPHead(hidden=(12,), dropout=0.3, batch_size=16, random_state=3),
    ],
    ids=["logreg", "svm", "mlp-dropout"],
)
def test_training_state_continues_exactly(blobs, make):
    """Saving the training state and loading it into a fresh head continues bit for bit."""
    X, y = blobs
    batches = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 400, 100)]
    straight, first = make(), make()
    for Xb, yb in batches:
        straight.partial_fit(Xb, yb, classes=np.unique(y))
    for Xb, yb in batches[:2]:
        first.partial_fit(Xb, yb, classes=np.unique(y))
    tensors, doc = first.training_state()
    resumed = make().load_training_state(tensors, doc)
    assert resumed.t_ == first.t_ and resumed.n_iter_ == 2
    for Xb, yb in batches[2:]:
        resumed.partial_fit(Xb, yb)
    for name, arr in straight.export_tensors().items():
        assert np.array_equal(arr, resumed.export_tensors()[name]), name
