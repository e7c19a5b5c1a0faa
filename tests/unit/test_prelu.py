"""lib.networks.prelu.PReLU (a speed-up): torch.nn.PReLU's values and gradients, checked by hand."""

import torch

from lib.networks.cmfnet import CmFNet
from lib.networks.prelu import PReLU


def test_values_and_gradients_are_torchs_prelu_and_by_hand():
    torch.manual_seed(0)
    ours, torchs = PReLU(), torch.nn.PReLU()
    with torch.no_grad():
        ours.weight.fill_(0.3)
        torchs.weight.fill_(0.3)
    x = torch.randn(2, 3, 5, 6, 7)
    upstream = torch.randn_like(x)
    results = []
    for module in (ours, torchs):
        inputs = x.clone().requires_grad_()
        output = module(inputs)
        output.backward(upstream)
        results.append((output, inputs.grad, module.weight.grad))
    (output, grad_x, grad_w), (output_t, grad_x_t, grad_w_t) = results
    assert output.grad_fn.name().startswith("_PReLUFunction")  # the fast backward ran, not torch's
    torch.testing.assert_close(output, output_t, rtol=0, atol=0)
    torch.testing.assert_close(grad_x, grad_x_t, rtol=0, atol=0)
    torch.testing.assert_close(grad_w, grad_w_t, rtol=1e-5, atol=1e-5)
    # by hand: slope 0.3 below zero; the slope's gradient sums x * upstream where x < 0
    negative = x < 0
    torch.testing.assert_close(output, torch.where(negative, 0.3 * x, x))
    torch.testing.assert_close(grad_x, torch.where(negative, 0.3 * upstream, upstream))
    torch.testing.assert_close(grad_w, (x * upstream)[negative].sum().reshape(1), rtol=1e-5, atol=1e-5)


def test_without_gradients_it_is_torchs_prelu():
    x = torch.randn(1, 2, 4, 4, 4)
    module = PReLU()
    with torch.no_grad():
        output = module(x)
    torch.testing.assert_close(output, torch.nn.functional.prelu(x, module.weight))
    assert module.state_dict().keys() == torch.nn.PReLU().state_dict().keys()


def test_cmfnet_uses_it_for_every_activation():
    network = CmFNet(num_modalities=2, num_classes=3, channels=(4, 8, 16))
    activations = [m for m in network.modules() if isinstance(m, torch.nn.PReLU)]
    assert activations and all(type(m) is PReLU for m in activations)


def test_in_bf16_under_autocast_it_matches_torch_and_sums_the_slopes_gradient_in_float32():
    torch.manual_seed(0)
    ours, torchs = PReLU(), torch.nn.PReLU()
    x = torch.randn(2, 4, 16, 16, 16).bfloat16()
    upstream = torch.randn_like(x)
    results = []
    for module in (ours, torchs):
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = module(inputs)
        output.backward(upstream)
        results.append((output, inputs.grad, module.weight.grad))
    (output, grad_x, grad_w), (output_t, grad_x_t, _) = results
    assert output.grad_fn.name().startswith("_PReLUFunction")  # the fast backward ran in bf16 too
    assert output.dtype == grad_x.dtype == torch.bfloat16 and grad_w.dtype == torch.float32
    torch.testing.assert_close(output, output_t, rtol=0, atol=0)
    torch.testing.assert_close(grad_x, grad_x_t, rtol=0, atol=0)
    # the slope's gradient over 32k voxels, by hand in float64: within bf16's rounding of each product
    exact = (x.double() * upstream.double())[x < 0].sum()
    assert abs(grad_w.item() - exact.item()) < 1e-3 * (x.double() * upstream.double()).abs().sum().item()
