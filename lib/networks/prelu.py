"""PReLU with a cheaper backward on the CPU: the same function, parameter and gradients as torch.nn.PReLU.

Written here because PyTorch's CPU backward of a single-parameter PReLU (`_prelu_kernel_backward`) is
several times slower than its forward: profiling CmFNet's training step on the demo's plan put it at 8 % of
the step. The gradients are two well-vectorised calls instead: the input's is LeakyReLU's backward with the
slope as the negative slope, and the slope's is one dot product of min(x, 0) with the incoming gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _PReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, float(weight), False)
        grad_weight = torch.dot(x.clamp(max=0).flatten(), grad.flatten()).reshape(weight.shape)
        return grad_x, grad_weight


class PReLU(nn.PReLU):
    """torch.nn.PReLU with one slope for all channels (MONAI's default activation); on the CPU, in float32,
    when gradients are needed, its backward is :class:`_PReLUFunction`'s. Same state-dict keys."""

    def __init__(self) -> None:
        super().__init__(num_parameters=1)

    def forward(self, x: Tensor) -> Tensor:
        fast = x.device.type == "cpu" and x.dtype == torch.float32 == self.weight.dtype and torch.is_grad_enabled()
        return _PReLUFunction.apply(x.contiguous(), self.weight) if fast else super().forward(x)
