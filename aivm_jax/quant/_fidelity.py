"""The fidelity report: how closely an integer program tracks its float model on held-out data."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["classification_fidelity", "describe_fidelity"]


def classification_fidelity(
    *,
    float_logits: np.ndarray,
    integer_outputs: np.ndarray,
    labels: np.ndarray,
    dataset: str,
) -> dict[str, Any]:
    """Accuracy of the float model and of the program on the same held-out examples.

    Stored as integer counts (program files hold no floats); `describe_fidelity`
    turns them into percentages. Predictions are the argmax, ties to the lowest index.
    """
    float_pred = np.argmax(float_logits, axis=-1)
    int_pred = np.argmax(integer_outputs, axis=-1)
    return {
        "metric": "accuracy",
        "dataset": dataset,
        "examples": int(labels.shape[0]),
        "float_correct": int((float_pred == labels).sum()),
        "integer_correct": int((int_pred == labels).sum()),
        "agreement": int((float_pred == int_pred).sum()),
    }


def describe_fidelity(report: dict[str, Any]) -> dict[str, Any]:
    """The report with derived percentages, for display."""
    if not report:
        return {}
    n = report["examples"]
    return {
        **report,
        "float_accuracy_pct": round(100.0 * report["float_correct"] / n, 2),
        "integer_accuracy_pct": round(100.0 * report["integer_correct"] / n, 2),
        "agreement_pct": round(100.0 * report["agreement"] / n, 2),
    }
