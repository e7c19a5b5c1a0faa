"""Mixed precision for training, decided here and nowhere else.

- A CUDA device with native bfloat16 (compute capability 8.0 and later: A100, H100, L40, RTX 30xx+):
  bf16 autocast. bf16 has float32's exponent range, so gradients need no loss scaling.
- An older CUDA device (V100, T4): fp16 autocast with `torch.amp.GradScaler`, which scales the loss so
  small fp16 gradients do not underflow and skips the steps whose gradients overflowed.
- The CPU (and any other device): full float32; CPU autocast does not speed up these 3D convolutions.

A GradScaler's scale is state that must last across steps, so there is one `MixedPrecision` per
optimiser (:func:`precision_for`), made on its first step.
"""

from __future__ import annotations

import contextlib
import weakref

import torch


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for training on `device`: bf16, fp16 or None (full precision)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


class MixedPrecision:
    """Autocast and loss scaling of one optimiser's steps on one device."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.dtype = autocast_dtype(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: autocast to `dtype`, or nothing in full precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass and optimiser step; with fp16 the loss is scaled and a step with inf/NaN gradients skipped."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


_PER_OPTIMIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def precision_for(optimizer: torch.optim.Optimizer, device: torch.device | str) -> MixedPrecision:
    """The optimiser's MixedPrecision on `device`, made on first use (a new one if the device changes)."""
    precision = _PER_OPTIMIZER.get(optimizer)
    if precision is None or precision.device != torch.device(device):
        precision = _PER_OPTIMIZER[optimizer] = MixedPrecision(device)
    return precision
