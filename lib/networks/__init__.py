"""Networks: CmFNet, the cross-modal segmentation network."""
