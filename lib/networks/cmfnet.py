"""CmFNet: a cross-modal 3D segmentation network (our concrete reading of arXiv 2506.18042).

Only the paper's abstract is available, so every architectural choice below is ours:

- Modality-specific feature learning: one residual encoder per modality (no weight sharing),
  each with its own decoder and 1x1x1 head, giving one prediction per modality.
- Cross-modal feature learning: at every encoder scale a :class:`ModalityFusion` module weighs the
  modality features per modality, channel and voxel and sums them; a fused decoder turns the
  fused features (bottleneck and skips) into the fused prediction, which is what the server serves.
- Missing modalities: a ``present`` mask removes absent modalities from the fusion, so the fused
  prediction does not depend on what an absent modality's input channel holds.

The blocks are MONAI's DynUNet blocks (``UnetResBlock``, ``UnetUpBlock``, ``UnetOutBlock``) with
instance normalization, which keeps every sample independent of the others in a batch. Its affine
scale and shift are on (MONAI's "instance" leaves them off): without them, every channel of every
block is forced to zero mean over the patch, and the network never learned the spleen or the tumour,
even from dense labels (`python -m benchmarks.accuracy`, phantoms, full supervision: mean Dice 0.425
without them, 0.766 with them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import Tensor, nn

SPATIAL_DIMS = 3
INSTANCE_NORM = ("instance", {"affine": True})

PRESETS: dict[str, dict] = {
    # Trains on a 2-core CPU: 0.35 M parameters per modality branch, 0.85 M in all for CT + MR.
    "small": {"channels": (8, 16, 32, 64)},
    # For a GPU: nnU-Net-like widths, five scales (spatial sizes divisible by 16); 42 M for CT + MR.
    "large": {"channels": (32, 64, 128, 256, 320)},
}


class CmFNetOutput(NamedTuple):
    """Everything the hybrid loss needs from one forward pass."""

    fused: Tensor  # (B, num_classes, D, H, W) logits
    per_modality: list[Tensor]  # M tensors (B, num_classes, D, H, W) of logits
    features: list[Tensor]  # M bottleneck features (B, channels[-1], D', H', W')
    present: Tensor  # (B, M) bool: the mask the fusion used


class _Encoder(nn.Module):
    """Residual encoder; stage 0 keeps the resolution, every later stage halves it."""

    def __init__(self, channels: Sequence[int], norm_name: str | tuple) -> None:
        super().__init__()
        in_channels = [1, *channels[:-1]]
        self.stages = nn.ModuleList(
            UnetResBlock(SPATIAL_DIMS, c_in, c_out, kernel_size=3, stride=1 if s == 0 else 2, norm_name=norm_name)
            for s, (c_in, c_out) in enumerate(zip(in_channels, channels, strict=True))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class _Decoder(nn.Module):
    """U-Net decoder: upsample, concatenate the skip of the same scale, convolve; then a 1x1x1 head."""

    def __init__(self, channels: Sequence[int], num_classes: int, norm_name: str | tuple) -> None:
        super().__init__()
        self.ups = nn.ModuleList(
            UnetUpBlock(
                SPATIAL_DIMS,
                channels[s],
                channels[s - 1],
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm_name,
            )
            for s in range(len(channels) - 1, 0, -1)
        )
        self.head = UnetOutBlock(SPATIAL_DIMS, channels[0], num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
        return self.head(x)


class ModalityFusion(nn.Module):
    """Fuses M same-shaped feature maps with a softmax over modalities, per channel and per voxel.

    For modality m, with ``f_m`` its features and ``g`` the mean of the present modalities' features
    (the cross-modal context), the gate logits are

        a_m = MLP_m(GAP([f_m, g]))  (B, C, 1, 1, 1)   channel attention
            + conv_m([f_m, g])       (B, 1, D, H, W)   spatial attention (1x1x1 conv)

    broadcast to (B, C, D, H, W). Absent modalities get logit -inf, so the weights
    ``w = softmax_m(a)`` are exactly 0 for them, and ``fused = sum_m w_m * f_m``. Absent features
    are also replaced by zeros before anything reads them (the context ``g`` included), so the
    fused output is exactly independent of an absent modality's input, even if it holds NaN.
    The last layer of each gate starts at zero: an untrained fusion is the mean of the present
    modalities.
    """

    def __init__(self, num_modalities: int, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.channel_gates = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
            for _ in range(num_modalities)
        )
        self.spatial_gates = nn.ModuleList(nn.Conv3d(2 * channels, 1, kernel_size=1) for _ in range(num_modalities))
        for gate in [*(g[-1] for g in self.channel_gates), *self.spatial_gates]:
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)

    def forward(self, features: Sequence[Tensor], present: Tensor) -> Tensor:
        """``features``: M tensors (B, C, D, H, W); ``present``: (B, M) bool with a True in every row."""
        mask = present[:, :, None, None, None, None]  # (B, M, 1, 1, 1, 1)
        stacked = torch.where(mask, torch.stack(list(features), dim=1), 0.0)  # (B, M, C, D, H, W)
        context = stacked.sum(dim=1) / present.sum(dim=1).to(stacked.dtype)[:, None, None, None, None]
        logits = []
        for m, (channel_gate, spatial_gate) in enumerate(zip(self.channel_gates, self.spatial_gates, strict=True)):
            joint = torch.cat([stacked[:, m], context], dim=1)  # (B, 2C, D, H, W)
            channel = channel_gate(joint.mean(dim=(2, 3, 4)))[:, :, None, None, None]
            logits.append(channel + spatial_gate(joint))
        weights = torch.softmax(torch.stack(logits, dim=1).masked_fill(~mask, float("-inf")), dim=1)
        return (weights * stacked).sum(dim=1)


class CmFNet(nn.Module):
    """Cross-modal segmentation network; see the module docstring for the design.

    Args:
        num_modalities: M, the number of input channels, one per modality in a fixed order (M >= 1;
            M = 1 is a plain encoder-decoder through the same code path).
        num_classes: background (class 0) plus the K foreground classes.
        channels: feature channels per scale; ``len(channels) - 1`` downsamplings, so every spatial
            size of the input must be divisible by ``2 ** (len(channels) - 1)``.
        norm_name: MONAI normalization name or (name, args); keep a per-sample one (instance norm),
            since batch norm would mix samples, and so absent modalities of one sample into another's
            prediction.
        fusion_reduction: channel reduction of the fusion's channel-attention MLP.
    """

    def __init__(
        self,
        num_modalities: int = 2,
        num_classes: int = 5,
        channels: Sequence[int] = (8, 16, 32, 64),
        norm_name: str | tuple = INSTANCE_NORM,
        fusion_reduction: int = 4,
    ) -> None:
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
        if len(channels) < 2:
            raise ValueError(f"channels needs at least two scales, got {tuple(channels)}")
        self.num_modalities = num_modalities
        self.num_classes = num_classes
        self.channels = tuple(channels)
        self.encoders = nn.ModuleList(_Encoder(channels, norm_name) for _ in range(num_modalities))
        self.decoders = nn.ModuleList(_Decoder(channels, num_classes, norm_name) for _ in range(num_modalities))
        self.fusions = nn.ModuleList(ModalityFusion(num_modalities, c, fusion_reduction) for c in channels)
        self.fused_decoder = _Decoder(channels, num_classes, norm_name)

    @property
    def size_divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """Fused logits (B, num_classes, D, H, W); the per-modality decoders are not run."""
        features, present = self._encode(x, present)
        return self._fuse_and_decode(features, present)

    def forward_all(self, x: Tensor, present: Tensor | None = None) -> CmFNetOutput:
        """Fused and per-modality logits plus bottleneck features, for training.

        Per-modality outputs are computed for absent modalities too; they are meaningless and the
        losses skip them using ``present``. Fill an absent channel with finite values (zeros) when
        training: the fused output ignores it, but NaN there would still reach the gradients
        through that modality's own branch.
        """
        features, present = self._encode(x, present)
        return CmFNetOutput(
            fused=self._fuse_and_decode(features, present),
            per_modality=[decoder(f) for decoder, f in zip(self.decoders, features, strict=True)],
            features=[f[-1] for f in features],
            present=present,
        )

    def _encode(self, x: Tensor, present: Tensor | None) -> tuple[list[list[Tensor]], Tensor]:
        """Per-modality multi-scale features ``features[m][scale]`` and the checked (B, M) mask."""
        if x.ndim != 5 or x.shape[1] != self.num_modalities:
            raise ValueError(f"expected input (B, {self.num_modalities}, D, H, W), got {tuple(x.shape)}")
        if any(size % self.size_divisor for size in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {self.size_divisor} in every axis"
            )
        present = self._check_present(present, x)
        features = [encoder(x[:, m : m + 1]) for m, encoder in enumerate(self.encoders)]
        return features, present

    def _check_present(self, present: Tensor | None, x: Tensor) -> Tensor:
        """(B, M) bool mask; (M,) or (1, M) broadcast to the batch (sliding-window batches vary in B)."""
        batch = x.shape[0]
        if present is None:
            return torch.ones(batch, self.num_modalities, dtype=torch.bool, device=x.device)
        if present.dtype != torch.bool:
            raise ValueError(f"present must be a bool tensor, got {present.dtype}")
        if present.ndim == 1:
            present = present[None]
        if present.ndim != 2 or present.shape[1] != self.num_modalities or present.shape[0] not in (1, batch):
            raise ValueError(
                f"present must have shape ({batch}, {self.num_modalities}), (1, {self.num_modalities}) "
                f"or ({self.num_modalities},), got {tuple(present.shape)}"
            )
        present = present.to(x.device).expand(batch, -1)
        if not present.any(dim=1).all():
            raise ValueError("at least one modality must be present in every sample")
        return present

    def _fuse_and_decode(self, features: list[list[Tensor]], present: Tensor) -> Tensor:
        fused = [fusion([f[scale] for f in features], present) for scale, fusion in enumerate(self.fusions)]
        return self.fused_decoder(fused)


def random_modality_mask(
    batch_size: int, num_modalities: int, p_drop: float, generator: torch.Generator | None = None
) -> Tensor:
    """Modality dropout: a (batch_size, num_modalities) bool CPU mask, True = keep.

    Each modality of each sample is dropped with probability ``p_drop``; a sample that would lose
    all of them keeps one, chosen uniformly.
    """
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"p_drop must be in [0, 1], got {p_drop}")
    keep = torch.rand(batch_size, num_modalities, generator=generator) >= p_drop
    rescue = torch.randint(num_modalities, (batch_size,), generator=generator)
    empty = ~keep.any(dim=1)
    keep[empty, rescue[empty]] = True
    return keep


def build_cmfnet(preset: str, num_modalities: int, num_classes: int, **overrides) -> CmFNet:
    """A CmFNet from a named preset in :data:`PRESETS`; keyword overrides win over the preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown CmFNet preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return CmFNet(num_modalities=num_modalities, num_classes=num_classes, **{**PRESETS[preset], **overrides})
