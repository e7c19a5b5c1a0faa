"""Mixed precision is decided in one place: full precision on the CPU, bf16 or fp16 with loss scaling on CUDA."""

import pytest
import torch

from lib.precision import MixedPrecision, autocast_dtype, precision_for

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def step(precision: MixedPrecision, model: torch.nn.Module, optimizer) -> torch.Tensor:
    optimizer.zero_grad()
    with precision.autocast():
        output = model(torch.ones(4, 8, device=precision.device))
    loss = output.float().pow(2).mean()
    precision.backward_and_step(loss, optimizer)
    return output


def test_the_cpu_trains_in_full_precision_without_loss_scaling():
    precision = MixedPrecision("cpu")
    assert autocast_dtype("cpu") is None and precision.dtype is None
    assert not precision.scaler.is_enabled()
    model = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    output = step(precision, model, optimizer)
    assert output.dtype == torch.float32
    assert not torch.equal(model.weight, before)  # the step was taken


def test_one_precision_per_optimizer_so_the_loss_scale_lasts_across_steps():
    model = torch.nn.Linear(8, 2)
    first, second = (torch.optim.SGD(model.parameters(), lr=0.1) for _ in range(2))
    assert precision_for(first, "cpu") is precision_for(first, "cpu")
    assert precision_for(first, "cpu") is not precision_for(second, "cpu")


@cuda
def test_cuda_uses_bf16_where_native_and_fp16_with_a_grad_scaler_otherwise():
    device = torch.device("cuda", torch.cuda.current_device())
    precision = MixedPrecision(device)
    native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    assert precision.dtype == (torch.bfloat16 if native_bf16 else torch.float16)
    assert precision.scaler.is_enabled() == (not native_bf16)
    model = torch.nn.Linear(8, 2).to(device)
    output = step(precision, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert output.dtype == precision.dtype
    assert torch.isfinite(model.weight).all()
