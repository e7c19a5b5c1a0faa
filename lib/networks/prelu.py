"""PReLU with a cheaper backward on the CPU: the same function, parameter and gradients as torch.nn.PReLU.

Written here because PyTorch's CPU backward of a single-parameter PReLU (`_prelu_kernel_backward`) is
several times slower than its forward: profiling CmFNet's training step on the demo's plan put it at 8 % of
the step. The gradients are two well-vectorised calls instead: the input's is LeakyReLU's backward with the
slope as the negative slope, and the slope's is one dot product of min(x, 0) with the incoming gradient
(accumulated in float32 when the input is bf16, as under lib.precision's CPU autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _PReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, float(weight), False)
        if x.dtype == torch.float32:
            grad_weight = torch.dot(x.clamp(max=0).flatten(), grad.flatten())
        else:  # a bf16 dot product accumulates in bf16: 3x slower here and less exact
            grad_weight = (x.clamp(max=0) * grad).sum(dtype=torch.float32)
        return grad_x, grad_weight.reshape(weight.shape).to(weight.dtype)


class PReLU(nn.PReLU):
    """torch.nn.PReLU with one slope for all channels (MONAI's default activation); on the CPU, in float32 or
    bf16, when gradients are needed, its backward is :class:`_PReLUFunction`'s. Same state-dict keys."""

    def __init__(self) -> None:
        super().__init__(num_parameters=1)

    def forward(self, x: Tensor) -> Tensor:
        fast = (
            x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16)
            and self.weight.dtype == torch.float32
            and torch.is_grad_enabled()
        )
        return _PReLUFunction.apply(x.contiguous(), self.weight) if fast else super().forward(x)
