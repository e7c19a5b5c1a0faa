"""The served answer on a stroked case: the model's and the random walker's probabilities pooled."""

import torch

from lib.infers.cmfnet import MODEL_WEIGHT, pooled


def test_pooled_is_the_weighted_mean_and_lets_the_model_add_a_class_without_strokes():
    model = torch.tensor([[0.05, 0.05], [0.05, 0.05], [0.9, 0.9]])  # (K+1 = 3, 2 voxels): sure of class 2
    walker = torch.tensor([[0.5, 0.9], [0.5, 0.1], [0.0, 0.0]])  # no stroke of class 2 on this case
    probabilities = pooled(model, walker)
    w = MODEL_WEIGHT
    expected = torch.tensor([0.05 * w + 0.5 * (1 - w), 0.05 * w + 0.5 * (1 - w), 0.9 * w])
    assert torch.allclose(probabilities[:, 0], expected)
    assert torch.allclose(probabilities.sum(dim=0), torch.ones(2))
    assert probabilities[:, 0].argmax() == 2  # where the walker is unsure, the model adds an organ not stroked
    assert probabilities[:, 1].argmax() == 0  # where the walker is sure, it wins
