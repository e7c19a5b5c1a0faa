"""Networks: CmFNet, the cross-modal segmentation network."""

from lib.networks.cmfnet import (
    PRESETS,
    CmFNet,
    CmFNetOutput,
    ModalityFusion,
    build_cmfnet,
    random_modality_mask,
)

__all__ = ["PRESETS", "CmFNet", "CmFNetOutput", "ModalityFusion", "build_cmfnet", "random_modality_mask"]
