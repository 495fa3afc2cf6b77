"""FCN-32s/16s/8s models over named backbone taps (see ``docs/INTERFACES.md``)."""

from fcn_dist.models.backbones import Backbone, Tap, create_backbone, list_backbones
from fcn_dist.models.fcn import (
    FCN,
    bilinear_kernel,
    create_model,
    freeze_backbone,
    list_models,
    param_groups,
    parse_model_name,
    stage_init,
)
from fcn_dist.spec import VARIANTS

__all__ = [
    "FCN",
    "VARIANTS",
    "Backbone",
    "Tap",
    "bilinear_kernel",
    "create_backbone",
    "create_model",
    "freeze_backbone",
    "list_backbones",
    "list_models",
    "param_groups",
    "parse_model_name",
    "stage_init",
]
