"""Mixed precision for training, decided here and nowhere else.

- A CUDA device with native bfloat16 (compute capability 8.0 and later: A100, H100, L40, RTX 30xx+):
  bf16 autocast. bf16 has float32's exponent range, so gradients need no loss scaling.
- An older CUDA device (V100, T4): fp16 autocast with `torch.amp.GradScaler`, which scales the loss so
  small fp16 gradients do not underflow and skips the steps whose gradients overflowed.
- A CPU with native bfloat16 instructions (AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake; or Intel's
  AMX): bf16 autocast too. oneDNN runs the 3D convolutions natively there: on a 2-core AMD EPYC (Zen 4) a
  CmFNet training step went from 0.44-0.57 to 0.33-0.43 s, its inference on a 512 x 512 x 200 case's
  working grid from 1.17-1.42 to 0.75-0.87 s (`python -m benchmarks.speed`; README, Speed and memory).
- Any other CPU (and device): full float32. Without those instructions bf16 is emulated, no faster.

Inference uses the same dtype (:func:`autocast`), so a model is served as it was validated.

A GradScaler's scale is state that must last across steps, so there is one `MixedPrecision` per
optimiser (:func:`precision_for`), made on its first step.
"""

from __future__ import annotations

import contextlib
import weakref

import torch


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for training and inference on `device`: bf16, fp16 or None (full precision)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX tiles (torch's own CPU capability checks)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing when `dtype` is None (full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class MixedPrecision:
    """Autocast and loss scaling of one optimiser's steps on one device."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.dtype = autocast_dtype(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: autocast to `dtype`, or nothing in full precision."""
        return autocast(self.device, self.dtype)

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
