"""Models: timm backbones + hierarchical heads, as plain ``nn.Module``s.

Usage::

    from hmc.models import build_model
    model = build_model(hierarchy, "resnet50.tv_in1k", "hrn", pretrained=True)  # the paper's
    out = model(images)  # HeadOutput(node_scores [B, N], leaf_logits [B, L], level_features)
    optimizer = torch.optim.SGD(model.param_groups(head_lr=0.002, backbone_lr=0.0002), momentum=0.9)
"""

from hmc.models.backbone import backbone_stages, create_backbone, freeze_stages
from hmc.models.classifier import HierarchicalClassifier, build_model
from hmc.models.heads import (
    FlatHead,
    HeadOutput,
    HRNHead,
    LeafHead,
    create_head,
    leaf_log_marginals,
    list_heads,
    register_head,
)
from hmc.models.weights import (
    WEIGHT_SOURCES,
    LoadReport,
    WeightsMismatchError,
    efficientnet_lite0_state_dict,
    load_backbone_weights,
    load_checkpoint,
    load_efficientnet_lite0_imagenet,
    read_state_dict,
)

__all__ = [
    "WEIGHT_SOURCES",
    "FlatHead",
    "HRNHead",
    "HeadOutput",
    "HierarchicalClassifier",
    "LeafHead",
    "LoadReport",
    "WeightsMismatchError",
    "backbone_stages",
    "build_model",
    "create_backbone",
    "create_head",
    "efficientnet_lite0_state_dict",
    "freeze_stages",
    "leaf_log_marginals",
    "list_heads",
    "load_backbone_weights",
    "load_checkpoint",
    "load_efficientnet_lite0_imagenet",
    "read_state_dict",
    "register_head",
]
