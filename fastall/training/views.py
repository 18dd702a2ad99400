"""The feature shift between the augmented views and view 0: what the head trains on against what it is
validated and deployed on.

``smd`` is the standardised mean difference, the mean over features of |mean(views 1..V-1) - mean(view 0)|
divided by the pooled standard deviation of the two (features with no spread left out), over the training
pool. It is ``large`` above :data:`SMD_LIMIT` (0.2, a "small" effect in Cohen's terms, per feature on
average): the augmentation moves the features (a fill colour that is not the background, for one) and a
head trained on augmented views alone meets a distribution it never saw. Training on all views
(``--train-views all``) includes view 0.
"""

from __future__ import annotations

import numpy as np

SMD_LIMIT = 0.2


def view_shift(features: np.ndarray, rows: np.ndarray, train_views: str, block: int = 1024) -> dict:
    """``{"smd", "large", "views", "message"}`` for ``features [N, V, D]`` restricted to ``rows``."""
    views = int(features.shape[1])
    if views < 2 or len(rows) < 2:
        return {"smd": None, "large": False, "views": views, "limit": SMD_LIMIT, "message": ""}
    rows = np.sort(np.asarray(rows))
    d = features.shape[2]
    s0, q0 = np.zeros(d), np.zeros(d)
    s1, q1 = np.zeros(d), np.zeros(d)
    for a in range(0, rows.size, block):
        x = np.asarray(features[rows[a : a + block]], dtype=np.float64)
        s0 += x[:, 0].sum(0)
        q0 += np.square(x[:, 0]).sum(0)
        aug = x[:, 1:].reshape(-1, d)
        s1 += aug.sum(0)
        q1 += np.square(aug).sum(0)
    n0, n1 = rows.size, rows.size * (views - 1)
    m0, m1 = s0 / n0, s1 / n1
    v0, v1 = np.maximum(q0 / n0 - m0**2, 0), np.maximum(q1 / n1 - m1**2, 0)
    pooled = np.sqrt((v0 + v1) / 2)
    live = pooled > 1e-6
    smd = float(np.mean(np.abs(m1 - m0)[live] / pooled[live])) if live.any() else 0.0
    large = smd > SMD_LIMIT
    message = ""
    if large:
        advice = (
            "training uses all views, so view 0 is among them: nothing to do unless the head trails the "
            "linear probe (then compare --train-views augmented, or re-extract with a --fill that matches "
            "the background)"
            if train_views == "all"
            else "the head trains on augmented views only: try --train-views all, or another extract --fill"
        )
        message = f"augmented views shift the features by {smd:.2f} SD from view 0 (> {SMD_LIMIT}); {advice}"
    return {"smd": smd, "large": large, "views": views, "limit": SMD_LIMIT, "message": message}
