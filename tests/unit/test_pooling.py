"""The served answer on a stroked case: the model's and the random walker's probabilities pooled."""

import pytest
import torch

from lib.infers.cmfnet import MODEL_WEIGHT, pooled, volumes_matched


def test_pooled_is_the_weighted_mean_and_lets_the_model_add_a_class_without_strokes():
    model = torch.tensor([[0.05, 0.05], [0.05, 0.05], [0.9, 0.9]])  # (K+1 = 3, 2 voxels): sure of class 2
    walker = torch.tensor([[0.5, 0.9], [0.5, 0.1], [0.0, 0.0]])  # no stroke of class 2 on this case
    probabilities = pooled(model, walker)
    w = MODEL_WEIGHT
    assert torch.allclose(probabilities, w * volumes_matched(model, walker) + (1 - w) * walker)
    assert torch.allclose(probabilities.sum(dim=0), torch.ones(2))
    assert probabilities[2, 0].item() == pytest.approx(w * 0.9)  # what the model gives a class without strokes is kept
    assert probabilities[:, 0].argmax() == 2  # where the walker is unsure, the model adds an organ not stroked
    assert probabilities[:, 1].argmax() == 0  # where the walker is sure, it wins


def test_volumes_matched_gives_the_model_the_walkers_class_volumes():
    # four voxels, two classes: the model calls three of them class 1 (an organ twice its size), the walker two
    model = torch.tensor([[0.1, 0.3, 0.4, 0.9], [0.9, 0.7, 0.6, 0.1]])
    walker = torch.tensor([[0.1, 0.2, 0.8, 0.9], [0.9, 0.8, 0.2, 0.1]])
    matched = volumes_matched(model, walker, iterations=50)
    assert torch.allclose(matched.sum(dim=1), walker.sum(dim=1), atol=1e-4)  # volumes 2.0 and 2.0
    assert torch.allclose(matched.sum(dim=0), torch.ones(4))
    assert matched[:, 2].argmax() == 0 and matched[1, 2] < 0.5  # the third voxel goes back to class 0
    # the order of the voxels within a class is the model's: a prior shift, not the walker's map
    assert torch.equal(matched[1].argsort(), model[1].argsort())
    # one iteration by hand: class 0 scaled by 2.0 / 1.7, class 1 by 2.0 / 2.3, then each voxel normalized
    scaled = model * torch.tensor([[2.0 / 1.7], [2.0 / 2.3]])
    assert torch.allclose(volumes_matched(model, walker, iterations=1), scaled / scaled.sum(dim=0))
