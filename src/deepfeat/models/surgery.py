"""Model surgery shared by training a CNN and loading a trained one: replacing the classifier head."""

from __future__ import annotations

from torch import nn

from ..errors import UsageError


def replace_head(model: nn.Module, classifier: str, num_classes: int) -> None:
    """Replace the module named ``classifier`` by a new linear layer with ``num_classes`` outputs."""
    cfg = getattr(model, "pretrained_cfg", None)
    if hasattr(model, "reset_classifier") and isinstance(cfg, dict) and cfg.get("classifier") == classifier:
        model.reset_classifier(num_classes)  # timm models (the bundled ones too)
        return
    old = model.get_submodule(classifier)
    if not isinstance(old, nn.Linear):
        raise UsageError(
            f"The classifier {classifier!r} is a {type(old).__name__}, not a Linear layer; "
            "deepfeat can only replace a linear head."
        )
    parent_name, _, attr = classifier.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
