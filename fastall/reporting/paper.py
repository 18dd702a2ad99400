"""The paper's published figures (Kochhar et al.), as fractions: what every run is shown beside."""

from __future__ import annotations

# Table II (5-fold CV) and Table III (held-out test).
PAPER_CV = {
    "peak_accuracy": 0.9739,
    "accuracy": 0.9663,
    "accuracy_std": 0.008,
    "precision": 0.952,
    "recall": 0.948,
    "f1": 0.95,
    "auc": 0.98,
}
PAPER_TEST = {"accuracy": 0.9543, "precision": 0.950, "recall": 0.955, "f1": 0.95, "auc": 0.98}
