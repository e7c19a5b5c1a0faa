"""The run's optimizer (lib.training.optimizer_for): AdamW fused, with the same update as PyTorch's loop."""

import copy

import torch

from lib.training import optimizer_for


def test_the_fused_optimizer_makes_the_loops_update():
    torch.manual_seed(0)
    fused_net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    loop_net = copy.deepcopy(fused_net)
    start = [p.detach().clone() for p in fused_net.parameters()]
    fused = optimizer_for(fused_net, 0.01)
    loop = torch.optim.AdamW(loop_net.parameters(), lr=0.01, weight_decay=1e-4, foreach=False)
    assert fused.defaults["fused"] and fused.defaults["weight_decay"] == 1e-4
    x = torch.randn(8, 4)
    for _ in range(3):
        for network, optimizer in ((fused_net, fused), (loop_net, loop)):
            optimizer.zero_grad()
            network(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(fused_net.parameters(), loop_net.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # three steps of 0.01 each moved every weight
    for a, b in zip(fused_net.parameters(), start, strict=True):
        assert (a - b).abs().min() > 1e-3
