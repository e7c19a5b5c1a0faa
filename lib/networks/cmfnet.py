"""CmFNet: a cross-modal 3D segmentation network (our concrete reading of arXiv 2506.18042).

Only the paper's abstract is available, so every architectural choice below is ours:

- Modality-specific feature learning: one residual encoder per modality (no weight sharing),
  each with its own decoder and 1x1x1 head, giving one prediction per modality.
- Cross-modal feature learning: at every encoder level a :class:`ModalityFusion` module weighs the
  modality features per modality, channel and voxel and sums them; a fused decoder turns the
  fused features (bottleneck and skips) into the fused prediction. The server serves it mixed with the
  per-modality predictions (:meth:`CmFNet.forward`, :data:`SERVED_FUSED_SHARE`).
- Missing modalities: a ``present`` mask removes absent modalities from the fusion, so the fused
  prediction does not depend on what an absent modality's input channel holds.

Building blocks: each encoder and the fused decoder are MONAI's UNet (``num_res_units=2``) cut in
two, so CmFNet with one modality is exactly that UNet's topology. An earlier build from DynUNet
blocks with a half-resolution head learned several times more slowly from the same data than a
plain MONAI UNet (the `early_fusion` method of benchmarks.accuracy). The per-modality decoders
stop on the grid of encoder level 1 (:data:`BRANCH_LEVEL`, a quarter of the input's size): their predictions are deep
supervision of each encoder, what the regularizers need and a second opinion in what is served, and no
high-resolution convolution runs per modality. Strides per level may differ per axis (see lib.planning),
so anisotropic scans keep their few slices.

Normalization is instance norm with affine parameters (a per-sample norm, so one sample's absent
modality never leaks into another's prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import Tensor, nn

from lib.networks.prelu import PReLU

SPATIAL_DIMS = 3
INSTANCE_NORM = ("instance", {"affine": True})
ACTIVATION = (PReLU, {})  # MONAI's default activation, with a faster backward on the CPU
# the per-modality decoders stop on the grid of this encoder level (1: a quarter of the input's size
# with strides of 2); going up to level 0 as well made a training step 2.25x a UNet step instead of
# 1.8x (the `step` part of benchmarks.speed)
BRANCH_LEVEL = 1
# what is served (:meth:`CmFNet.forward`): this share of the fused output's softmax, the rest the mean softmax of
# the per-modality outputs (:func:`mixed_probabilities`); on the real scan's first seed 0.929 against 0.925 for
# the fused output alone, shares 1 / 0.9 / 0.75 / 0.5 / 0.25 / 0 gave 0.925 / 0.926 / 0.927 / 0.929 / 0.921 /
# 0.875; with it, above early fusion in six runs of six (README, "Serving the per-modality outputs too")
SERVED_FUSED_SHARE = 0.5


class CmFNetOutput(NamedTuple):
    """Everything the hybrid loss needs from one forward pass."""

    fused: Tensor  # (B, num_classes, D, H, W) logits on the input grid
    per_modality: list[Tensor]  # M tensors (B, num_classes, D', H', W'): logits on level BRANCH_LEVEL's grid
    features: list[Tensor]  # M bottleneck features (B, channels[-1], ...)
    present: Tensor  # (B, M) bool: the mask the fusion used


def _down(c_in: int, c_out: int, stride, norm) -> nn.Module:
    """One encoder level: MONAI UNet's down layer (a residual unit of two convolutions)."""
    return ResidualUnit(SPATIAL_DIMS, c_in, c_out, strides=stride, kernel_size=3, subunits=2, act=ACTIVATION, norm=norm)


def _up(c_in: int, c_out: int, stride, norm, is_top: bool) -> nn.Module:
    """One decoder level: MONAI UNet's up layer (transposed convolution, then a residual unit)."""
    return (_TopLevel if is_top else nn.Sequential)(
        Convolution(
            SPATIAL_DIMS, c_in, c_out, strides=stride, kernel_size=3, act=ACTIVATION, norm=norm, is_transposed=True
        ),
        ResidualUnit(
            SPATIAL_DIMS,
            c_out,
            c_out,
            strides=1,
            kernel_size=3,
            subunits=1,
            act=ACTIVATION,
            norm=norm,
            last_conv_only=is_top,
        ),
    )


class _TopLevel(nn.Sequential):
    """The fused decoder's top level (transposed convolution, then a convolution from classes to classes on
    the input grid), its last convolution channels-last on the CPU.

    oneDNN's backward of a 3x3x3 convolution with as few channels as classes is slow in the default layout:
    with 5 classes on a 2 x 64^3 patch its forward and backward took 0.17 s of a 0.72 s CmFNet forward and
    backward (profiled on a 2-core Xeon), 0.035 s channels-last; the whole training step went from 0.90 to
    0.78 s. Channels-last everywhere was slower than this one change (other layers lose what this one
    gains). Same weights and state-dict keys as a plain Sequential; the output is returned in the default
    layout."""

    def forward(self, x: Tensor) -> Tensor:
        upsample, convolve = self
        x = upsample(x)
        if x.device.type != "cpu":
            return convolve(x)
        return convolve(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()


class _Encoder(nn.Module):
    """MONAI UNet's encoder for one modality: level s < L-1 downsamples by ``strides[s]``; the last
    level (the bottom) keeps the size of the one before it."""

    def __init__(self, channels: Sequence[int], strides: Sequence[Sequence[int]], norm) -> None:
        super().__init__()
        in_channels = [1, *channels[:-1]]
        self.levels = nn.ModuleList(
            _down(c_in, c_out, stride, norm)
            for c_in, c_out, stride in zip(in_channels, channels, [*strides, 1], strict=True)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class _Decoder(nn.Module):
    """MONAI UNet's decoder: from the bottom up, concatenate the level's features, then upsample.

    With ``out_channels`` it ends on the input grid with plain convolution outputs (logits), as
    UNet's top layer does; without, it stops on the grid of level :data:`BRANCH_LEVEL` (or the
    bottom's, in a shallower network) with that level's features.
    """

    def __init__(
        self, channels: Sequence[int], strides: Sequence[Sequence[int]], norm, out_channels: int | None = None
    ) -> None:
        super().__init__()
        last = len(channels) - 2
        top = 0 if out_channels is not None else min(BRANCH_LEVEL + 1, last + 1)
        # what forward returns: the bottom's own features when there is no level to go up to
        self.out_channels = out_channels or (channels[top - 1] if top <= last else channels[-1])
        self.ups = nn.ModuleList(
            _up(
                channels[s] + (channels[-1] if s == last else channels[s]),
                channels[s - 1] if s > 0 else out_channels,
                strides[s],
                norm,
                is_top=s == 0,
            )
            for s in range(last, top - 1, -1)
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=False):
            x = up(torch.cat([skip, x], dim=1))
        return x


class ModalityFusion(nn.Module):
    """Fuses M same-shaped feature maps with a softmax over modalities, per channel and per voxel.

    For modality m, with ``f_m`` its features and ``g`` the mean of the present modalities' features
    (the cross-modal context), the gate logits are

        a_m = MLP_m(GAP([f_m, g]))  (B, C, 1, 1, 1)   channel attention
            + conv_m([f_m, g])       (B, 1, D, H, W)   spatial attention (1x1x1 conv)

    broadcast to (B, C, D, H, W). Absent modalities, and modalities without data at a voxel (outside
    their field of view), get logit -inf, so the weights ``w = softmax_m(a)`` are exactly 0 for them,
    and ``fused = sum_m w_m * f_m``. Absent features
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

    def forward(self, features: Sequence[Tensor], present: Tensor, has_data: Tensor | None = None) -> Tensor:
        """``features``: M tensors (B, C, D, H, W); ``present``: (B, M) bool with a True in every row;
        ``has_data``: optional (B, M, D, H, W) bool, where each modality has data (voxels where none
        has data fall back to ``present``)."""
        mask = present[:, :, None, None, None, None]  # (B, M, 1, 1, 1, 1)
        if has_data is not None:
            voxel_mask = mask & has_data[:, :, None]
            mask = voxel_mask | (mask & ~voxel_mask.any(dim=1, keepdim=True))
        stacked = torch.where(mask, torch.stack(list(features), dim=1), 0.0)  # (B, M, C, D, H, W)
        context = stacked.sum(dim=1) / mask.sum(dim=1).to(stacked.dtype).clamp(min=1)
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
            M = 1 is MONAI's UNet through the same code path).
        num_classes: background (class 0) plus the K foreground classes.
        channels: feature channels per level, as MONAI's UNet takes them (the last is the bottom).
        strides: per level but the last, the downsampling factor per axis (1 or 2); every input
            size must be a multiple of their product along its axis (:attr:`size_divisor`).
    """

    def __init__(
        self,
        num_modalities: int = 2,
        num_classes: int = 5,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[Sequence[int]] | None = None,
        norm: str | tuple = INSTANCE_NORM,
        fusion_reduction: int = 4,
    ) -> None:
        super().__init__()
        strides = [(2, 2, 2)] * (len(channels) - 1) if strides is None else [tuple(s) for s in strides]
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(
                f"need two or more levels and one stride per level but the last, got {channels} and {strides}"
            )
        self.num_modalities = num_modalities
        self.num_classes = num_classes
        self.channels = tuple(channels)
        self.strides = tuple(strides)
        self.encoders = nn.ModuleList(_Encoder(channels, strides, norm) for _ in range(num_modalities))
        self.fusions = nn.ModuleList(ModalityFusion(num_modalities, c, fusion_reduction) for c in channels)
        self.fused_decoder = _Decoder(channels, strides, norm, out_channels=num_classes)
        self.decoders = nn.ModuleList(_Decoder(channels, strides, norm) for _ in range(num_modalities))
        self.heads = nn.ModuleList(nn.Conv3d(d.out_channels, num_classes, kernel_size=1) for d in self.decoders)

    @property
    def size_divisor(self) -> tuple[int, int, int]:
        """Every spatial size of the input must be a multiple of this, per axis."""
        return tuple(int(torch.tensor([s[axis] for s in self.strides]).prod()) for axis in range(3))

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """Log-probabilities (B, num_classes, D, H, W) of the served prediction: the fused output mixed with
        the per-modality outputs of the modalities present with data (:data:`SERVED_FUSED_SHARE`).

        ``x``: (B, M, D, H, W), NaN where a modality has no data; ``present``: (B, M), (1, M) or (M,)
        bool, the modalities the case has (all when None).
        """
        output = self.forward_all(x, present)
        usable = usable_branches(output.present, data_on_grid(~torch.isnan(x), output.per_modality[0].shape[2:]))
        served = mixed_probabilities(output.fused, output.per_modality, usable, SERVED_FUSED_SHARE)
        return served.clamp_min(torch.finfo(served.dtype).tiny).log()

    def forward_all(self, x: Tensor, present: Tensor | None = None) -> CmFNetOutput:
        """Fused and per-modality logits plus bottleneck features, for training.

        Per-modality outputs are computed for absent modalities too; they are meaningless and the
        losses skip them using ``present``. Fill an absent channel with finite values (zeros) when
        training: the fused output ignores it, but NaN there would still reach the gradients
        through that modality's own branch.
        """
        x, has_data, present = self._inputs(x, present)
        features = self._encode(x)
        return CmFNetOutput(
            fused=self._fuse_and_decode(features, has_data, present),
            per_modality=[
                head(decoder(f)) for head, decoder, f in zip(self.heads, self.decoders, features, strict=True)
            ],
            features=[f[-1] for f in features],
            present=present,
        )

    def _inputs(self, x: Tensor, present: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The input with NaN replaced by 0, where each modality has data, and the checked (B, M) mask."""
        if x.ndim != 5 or x.shape[1] != self.num_modalities:
            raise ValueError(f"expected input (B, {self.num_modalities}, D, H, W), got {tuple(x.shape)}")
        if any(size % d for size, d in zip(x.shape[2:], self.size_divisor, strict=True)):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be a multiple of {self.size_divisor}")
        present = self._check_present(present, x)
        has_data = ~torch.isnan(x)
        present = present & has_data.flatten(2).any(dim=2)
        present = torch.where(present.any(dim=1, keepdim=True), present, has_data.flatten(2).any(dim=2))
        if not present.any(dim=1).all():
            raise ValueError("every sample needs data in at least one modality")
        return torch.nan_to_num(x), has_data, present

    def _encode(self, x: Tensor) -> list[list[Tensor]]:
        """Per-modality multi-level features ``features[m][level]``."""
        return [encoder(x[:, m : m + 1]) for m, encoder in enumerate(self.encoders)]

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

    def _fuse_and_decode(self, features: list[list[Tensor]], has_data: Tensor, present: Tensor) -> Tensor:
        fused = []
        for level, fusion in enumerate(self.fusions):
            level_data = data_on_grid(has_data, features[0][level].shape[2:])
            fused.append(fusion([f[level] for f in features], present, level_data))
        return self.fused_decoder(fused)


def data_on_grid(has_data: Tensor, size: Sequence[int]) -> Tensor:
    """(B, M, *size) bool from the input's (B, M, ...) data mask: a voxel of a coarser grid has data when all
    the input voxels it covers do."""
    return F.interpolate(has_data.float(), size=tuple(size), mode="area") > 0.999


def usable_branches(present: Tensor, valid: Tensor) -> list[Tensor]:
    """Per modality, a (B, 1, ...) bool mask of where its own output counts: the modality is present and
    has data there (``valid``: :func:`data_on_grid` on the per-modality outputs' grid)."""
    return [present[:, m, None, None, None, None] & valid[:, m : m + 1] for m in range(present.shape[1])]


def mixed_probabilities(
    fused: Tensor, per_modality: Sequence[Tensor], usable: Sequence[Tensor], share: float
) -> Tensor:
    """``share * softmax(fused) + (1 - share) * p_branches`` in float32 on the fused grid.

    ``p_branches`` is the mean softmax of the per-modality outputs (upsampled trilinearly from their
    coarser grid) over the modalities ``usable`` there ((B, 1, ...) bool masks on that grid,
    :func:`usable_branches`); the fused softmax where none is. Without per-modality outputs (early fusion)
    it is the fused softmax.
    """
    fused = torch.softmax(fused.float(), dim=1)
    if not per_modality:
        return fused
    size = fused.shape[2:]
    total = torch.zeros_like(fused)
    count = fused.new_zeros((fused.shape[0], 1, *size))
    for logits, ok in zip(per_modality, usable, strict=True):
        weight = F.interpolate(ok.float(), size=size, mode="nearest")
        total = total + weight * F.interpolate(torch.softmax(logits.float(), dim=1), size=size, mode="trilinear")
        count = count + weight
    branches = torch.where(count > 0, total / count.clamp(min=1), fused)
    return share * fused + (1 - share) * branches


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
