"""The one-line text of a patient-level result (``fastall.training.patients.patient_level``)."""

from __future__ import annotations

import math


def patient_line(pl: dict) -> str:
    """One printed line: patients, and accuracy / sensitivity / specificity / AUC by mean probability."""
    m = pl["mean_probability"]

    def pct(d: dict) -> str:
        ci = f" [{100 * d['ci'][0]:.0f}-{100 * d['ci'][1]:.0f}]" if d["ci"] else ""
        return "n/a" if d["n"] == 0 else f"{100 * d['value']:.1f}%{ci}"

    auc = "n/a" if m["auc"] is None or not math.isfinite(m["auc"]) else f"{m['auc']:.3f}"
    text = (
        f"{pl['patients']} patients ({pl['positive_patients']} {pl.get('positive_class') or 'positive'}): "
        f"accuracy {pct(m['accuracy'])}, "
        f"sensitivity {pct(m['sensitivity'])}, specificity {pct(m['specificity'])}, AUC {auc}"
    )
    return text + (" (" + "; ".join(pl["notes"]) + ")" if pl["notes"] else "")
