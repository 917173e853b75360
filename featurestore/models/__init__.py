"""The networks: the backbone registry (`BackboneSpec`, weights, preprocessing) and the heads
trained on top of them (linear, MLP, logistic regression).
"""

from __future__ import annotations

from featurestore.config import HEAD_KINDS
from featurestore.models.backbones import (
    FAMILIES,
    BackboneSpec,
    LoadedBackbone,
    ModelInfo,
    Preprocessing,
    count_parameters,
    describe_models,
    get_spec,
    imagenet_available,
    list_specs,
    load_backbone,
    preprocessing_for,
    register,
    weights_identity,
    weights_tag,
)
from featurestore.models.heads import (
    FREEZE_POLICIES,
    LOGREG_CS,
    HeadKind,
    LogregFit,
    MLPHead,
    Standardize,
    TrunkHead,
    apply_freeze,
    build_head,
    count_params,
    export_head,
    fit_logreg,
)
from featurestore.models.weights import (
    download_imagenet,
    hub_checkpoint_dir,
    load_imagenet,
    load_state_file,
    read_state_dict,
    weights_path,
)

__all__ = [
    "FAMILIES",
    "FREEZE_POLICIES",
    "HEAD_KINDS",
    "LOGREG_CS",
    "BackboneSpec",
    "HeadKind",
    "LoadedBackbone",
    "LogregFit",
    "MLPHead",
    "ModelInfo",
    "Preprocessing",
    "Standardize",
    "TrunkHead",
    "apply_freeze",
    "build_head",
    "count_parameters",
    "count_params",
    "describe_models",
    "download_imagenet",
    "export_head",
    "fit_logreg",
    "get_spec",
    "hub_checkpoint_dir",
    "imagenet_available",
    "list_specs",
    "load_backbone",
    "load_imagenet",
    "load_state_file",
    "preprocessing_for",
    "read_state_dict",
    "register",
    "weights_identity",
    "weights_path",
    "weights_tag",
]
