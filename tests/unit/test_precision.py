"""Mixed precision is decided in one place: bf16 on a CPU with native bf16 and full precision on other CPUs,
bf16 or fp16 with loss scaling on CUDA; inference runs each window in that dtype and blends in float32."""

from pathlib import Path

import pytest
import torch

from lib.inference import MixedPrecisionInferer
from lib.precision import MixedPrecision, autocast_dtype, precision_for

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def step(precision: MixedPrecision, model: torch.nn.Module, optimizer) -> torch.Tensor:
    optimizer.zero_grad()
    with precision.autocast():
        output = model(torch.ones(4, 8, device=precision.device))
    loss = output.float().pow(2).mean()
    precision.backward_and_step(loss, optimizer)
    return output


def cpu_flags() -> set[str]:
    """The kernel's list of this CPU's instruction-set flags (Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_the_cpu_trains_in_bf16_exactly_when_it_has_native_bf16_and_never_scales_the_loss():
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"})
    precision = MixedPrecision("cpu")
    assert autocast_dtype("cpu") == precision.dtype == (torch.bfloat16 if native else None)
    assert not precision.scaler.is_enabled()
    model = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    output = step(precision, model, optimizer)
    assert output.dtype == (torch.bfloat16 if native else torch.float32)
    assert model.weight.dtype == torch.float32  # the weights stay float32
    assert not torch.equal(model.weight, before)  # the step was taken


def test_inference_runs_each_window_in_the_autocast_dtype_and_blends_in_float32():
    torch.manual_seed(0)
    convolution = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)
    seen = []

    def network(window, scale):
        scores = convolution(window) * scale
        seen.append(scores.dtype)
        return scores

    image = torch.randn(1, 2, 20, 16, 12)
    settings = {"roi_size": (8, 8, 8), "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"}
    with torch.no_grad():
        exact = MixedPrecisionInferer(None, **settings)(image, network, scale=2.0)
        assert set(seen) == {torch.float32}
        seen.clear()
        mixed = MixedPrecisionInferer(torch.bfloat16, **settings)(image, network, scale=2.0)
    assert set(seen) == {torch.bfloat16}  # every window ran in bf16, with the caller's arguments
    assert mixed.dtype == torch.float32 and mixed.shape == exact.shape == (1, 3, 20, 16, 12)
    # bf16 keeps 8 bits of mantissa: the blended scores agree to about 1 % of their scale
    assert torch.allclose(mixed, exact, atol=0.02 * exact.abs().max().item())
    assert not torch.equal(mixed, exact)


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
