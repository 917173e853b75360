"""Using a trained run: `predict` probabilities for new images, `explain` them with Grad-CAM,
and `export` the whole model to ONNX (scored again through onnxruntime)."""

from __future__ import annotations

from featurestore.use.explain import (
    CONTACT_SHEET,
    OVERLAY_ALPHA,
    ExplainResult,
    ExplainRow,
    cam_stages,
    cam_to_image,
    explain_images,
    explain_run,
    grad_cam,
    overlay,
    pick_test_images,
    predictor_cam,
    report_section,
    write_contact_sheet,
)
from featurestore.use.export import (
    EXPORT_FORMATS,
    ExportedModel,
    ExportResult,
    OnnxModel,
    export_run,
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
    "EXPORT_FORMATS",
    "MODES",
    "OVERLAY_ALPHA",
    "ExplainResult",
    "ExplainRow",
    "ExportResult",
    "ExportedModel",
    "OnnxModel",
    "PredictionRow",
    "Predictor",
    "RunHead",
    "cam_stages",
    "cam_to_image",
    "count_predictions",
    "expand_inputs",
    "explain_images",
    "explain_run",
    "export_run",
    "grad_cam",
    "load_predictor",
    "overlay",
    "pick_test_images",
    "predictor_cam",
    "report_section",
    "write_contact_sheet",
    "write_predictions_csv",
]
