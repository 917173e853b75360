"""The networks: the backbone registry (`BackboneSpec`, weights, preprocessing), the providers
beyond torchvision (`timm:`, `hf:`, `txv:` and aliases, `ProviderSpec`) and the heads trained on
top of them (linear, MLP, logistic regression, and stacks of them for sweeps).
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
    HeadKind,
    MLPHead,
    Standardize,
    TrunkHead,
    apply_freeze,
    build_head,
    count_params,
    export_head,
)
from featurestore.models.provider_spec import Alias, ProviderSpec, token_poolings
from featurestore.models.providers import ALIASES, PROVIDERS, file_stem, is_provider_name
from featurestore.models.providers import installed as provider_installed
from featurestore.models.stacked import (
    StackedHeads,
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
    "ALIASES",
    "FAMILIES",
    "FREEZE_POLICIES",
    "HEAD_KINDS",
    "PROVIDERS",
    "Alias",
    "BackboneSpec",
    "HeadKind",
    "LoadedBackbone",
    "MLPHead",
    "ModelInfo",
    "Preprocessing",
    "ProviderSpec",
    "StackedHeads",
    "Standardize",
    "TrunkHead",
    "apply_freeze",
    "build_head",
    "count_parameters",
    "count_params",
    "describe_models",
    "download_imagenet",
    "export_head",
    "file_stem",
    "get_spec",
    "hub_checkpoint_dir",
    "imagenet_available",
    "is_provider_name",
    "list_specs",
    "load_backbone",
    "load_imagenet",
    "load_state_file",
    "preprocessing_for",
    "provider_installed",
    "read_state_dict",
    "register",
    "token_poolings",
    "weights_identity",
    "weights_path",
    "weights_tag",
]
