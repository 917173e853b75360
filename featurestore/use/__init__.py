"""Using a trained run: `predict` probabilities for new images and `explain` them with Grad-CAM."""

from __future__ import annotations

from featurestore.use.explain import (
    CONTACT_SHEET,
    OVERLAY_ALPHA,
    ExplainResult,
    ExplainRow,
    cam_stages,
    cam_to_image,
    explain_findings,
    explain_images,
    explain_run,
    grad_cam,
    overlay,
    pick_test_images,
    predictor_cam,
    report_section,
    write_contact_sheet,
)
from featurestore.use.predict import (
    MODES,
    PredictionRow,
    Predictor,
    RunHead,
    count_predictions,
    expand_inputs,
    load_predictor,
    write_predictions_csv,
)

__all__ = [
    "CONTACT_SHEET",
    "MODES",
    "OVERLAY_ALPHA",
    "ExplainResult",
    "ExplainRow",
    "PredictionRow",
    "Predictor",
    "RunHead",
    "cam_stages",
    "cam_to_image",
    "count_predictions",
    "expand_inputs",
    "explain_findings",
    "explain_images",
    "explain_run",
    "grad_cam",
    "load_predictor",
    "overlay",
    "pick_test_images",
    "predictor_cam",
    "report_section",
    "write_contact_sheet",
    "write_predictions_csv",
]
