"""Plots (matplotlib, rendered headless with the Agg canvas; imported only when used)."""

from __future__ import annotations

from .plots import (
    EMBEDDING_METHODS,
    PlotResult,
    plot_activations,
    plot_confusion_matrix,
    plot_embedding,
    plot_filters,
    plot_history,
)

__all__ = [
    "EMBEDDING_METHODS",
    "PlotResult",
    "plot_activations",
    "plot_confusion_matrix",
    "plot_embedding",
    "plot_filters",
    "plot_history",
]
