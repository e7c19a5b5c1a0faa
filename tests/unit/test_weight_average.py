"""The average of the weights that a run validates and publishes (lib.training.weight_average), by hand."""

import torch

from lib.training import AVERAGE_DECAY, weight_average


def test_the_average_starts_as_the_network_copies_the_first_update_and_then_warms_its_decay_up():
    network = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        network.weight.fill_(5.0)
    averaged = weight_average(network)
    assert averaged.module.weight.item() == 5.0  # before any step: the weights it started from

    expected = None
    for update, value in enumerate([1.0, 3.0, -2.0, 7.0]):
        with torch.no_grad():
            network.weight.fill_(value)
        averaged.update_parameters(network)
        if update == 0:
            expected = value  # the first update takes the weights as they are
        else:
            decay = min(AVERAGE_DECAY, (1 + update) / (10 + update))
            expected = decay * expected + (1 - decay) * value
        assert abs(averaged.module.weight.item() - expected) < 1e-6
    assert abs(averaged.module.weight.item() - 7.0) > 1.0  # not the last iterate
    assert network.weight.item() == 7.0  # the network itself is left as trained


def test_the_decay_reaches_its_cap_in_a_long_run():
    network = torch.nn.Linear(1, 1, bias=False)
    averaged = weight_average(network)
    with torch.no_grad():
        network.weight.fill_(0.0)
    for _ in range(2000):
        averaged.update_parameters(network)
    with torch.no_grad():
        network.weight.fill_(1.0)
    averaged.update_parameters(network)
    # at 2000 updates (1 + n) / (10 + n) > AVERAGE_DECAY: one step moves the average by 1 - AVERAGE_DECAY
    assert abs(averaged.module.weight.item() - (1 - AVERAGE_DECAY)) < 1e-6


def test_float_buffers_are_averaged_and_counters_copied():
    network = torch.nn.BatchNorm1d(1)  # running_mean (float) and num_batches_tracked (an integer counter)
    averaged = weight_average(network)
    network.train()
    for value in (2.0, 4.0):
        network(torch.full((4, 1), value))
        averaged.update_parameters(network)
    # running_mean: 0.2 after the first batch (momentum 0.1), 0.58 after the second; the average copies the
    # first and then moves by 1 - decay, decay = (1 + 1) / (10 + 1) after one update
    decay = 2 / 11
    assert abs(averaged.module.running_mean.item() - (decay * 0.2 + (1 - decay) * 0.58)) < 1e-6
    assert averaged.module.num_batches_tracked.item() == 2
