"""A corrected segmentation of one class from strokes, model probabilities and every modality.

The energy is MONAI Label's ISeg graph cut (Wang et al. 2018, as in its Histogram+GraphCut
task), built from monailabel's own pieces: unaries from a foreground probability with the
strokes as hard constraints (`make_iseg_unary`), a pairwise term from image intensities
solved by numpymaxflow. What we add: the probability is the product of the model's
probability (when a model exists) and a per-modality stroke-intensity histogram likelihood
(modalities treated as independent), and the pairwise term uses all present modalities as
channels, so an edge seen in either CT or MR stops the cut.
"""

import numpy as np
import numpymaxflow
from monailabel.scribbles.utils import make_iseg_unary, make_likelihood_image_histogram
from scipy.ndimage import distance_transform_edt

BACKGROUND, FOREGROUND = 1, 2  # stroke codes for monailabel's scribbles utilities
EPS = 1e-6


def stroke_likelihood(image: np.ndarray, codes: np.ndarray, bins: int = 64) -> np.ndarray:
    """(2, ...) background/foreground probability from per-channel stroke histograms."""
    likelihood = np.ones((2, *image.shape[1:]), np.float64)
    for channel in image:
        likelihood *= make_likelihood_image_histogram(channel[None], codes[None], BACKGROUND, FOREGROUND, bins)
    return (likelihood / likelihood.sum(axis=0, keepdims=True).clip(min=EPS)).astype(np.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def corrected_mask(
    image: np.ndarray,
    strokes: np.ndarray,
    selected: int,
    spacing: tuple[float, float, float],
    model_probability: np.ndarray | None = None,
    reach_mm: float = 40.0,
    lamda: float = 3.0,
    sigma: float = 0.3,
) -> np.ndarray:
    """Bool mask of class `selected` that contains every stroke of it and none of any other stroke.

    `image`: (C, X, Y, Z) normalized modalities on the reference grid; `strokes`: stored
    convention (0 none, other values = other classes or background); `model_probability`:
    the model's probability of `selected`, or None when no model is trained yet.

    The foreground probability combines, in logits, a prior and the stroke appearance:
    logit p = logit prior + w * logit h, where h is the stroke histogram likelihood and
    w = exp(-d / reach_mm) with d the distance to the nearest stroke, so appearance counts
    near what the user drew. The prior is the model's probability, or without a model
    0.5 * exp(-d_fg / reach_mm) (d_fg: distance to the nearest stroke of the class), so that
    tissue far from every foreground stroke stays background.
    """
    codes = np.zeros(strokes.shape, np.uint8)
    codes[(strokes > 0) & (strokes != selected)] = BACKGROUND
    codes[strokes == selected] = FOREGROUND
    near_stroke = np.exp(-distance_transform_edt(codes == 0, sampling=spacing) / reach_mm)
    if model_probability is None:
        if not (codes == FOREGROUND).any():
            return np.zeros(strokes.shape, bool)
        prior = 0.5 * np.exp(-distance_transform_edt(codes != FOREGROUND, sampling=spacing) / reach_mm)
    else:
        prior = model_probability
    appearance = stroke_likelihood(image, codes)[1]
    foreground = 1.0 / (1.0 + np.exp(-(_logit(prior) + near_stroke * _logit(appearance))))
    probability = np.stack([1.0 - foreground, foreground]).astype(np.float32)
    unary = make_iseg_unary(probability, codes[None], BACKGROUND, FOREGROUND)
    cut = numpymaxflow.maxflow(image.astype(np.float32), unary.astype(np.float32), lamda, sigma, 6)[0] > 0
    cut[codes == FOREGROUND] = True
    cut[codes == BACKGROUND] = False
    return cut
