"""Demo phantoms and WORD-style scribble simulation."""

import numpy as np

from lib.data.phantoms import DEMO_LABELS, make_case
from lib.data.scribbles import ScribbleSettings, annotated_fraction, simulate_scribbles

K = len(DEMO_LABELS)


def test_phantoms_are_deterministic_by_seed_and_hold_every_class():
    a, b, c = make_case(3), make_case(3), make_case(4)
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.mr, b.mr)
    assert not np.array_equal(a.truth, c.truth)
    assert set(np.unique(a.truth)) == {0, *DEMO_LABELS.values()}
    assert a.ct.shape != a.mr.shape and not np.allclose(a.ct_affine, a.mr_affine)


def test_tumour_is_faint_on_ct():
    case = make_case(0)
    tumour, liver = case.truth == DEMO_LABELS["tumour"], case.truth == DEMO_LABELS["liver"]
    ct_contrast = (case.ct[tumour].mean() - case.ct[liver].mean()) / case.ct[liver].std()
    assert 0 < ct_contrast < 2  # within two noise standard deviations on CT


def test_simulated_strokes_lie_inside_their_class_on_a_fraction_of_slices():
    case = make_case(1)
    settings = ScribbleSettings(slice_fraction=0.3, body_threshold=-500.0)
    scribbles = simulate_scribbles(case.truth, K, seed=0, settings=settings, image=case.ct)
    for class_id in DEMO_LABELS.values():
        strokes = scribbles == class_id
        assert strokes.any()
        assert (case.truth[strokes] == class_id).all()
        slices_with_class = case.truth.reshape(-1, case.truth.shape[2]) == class_id
        n_class_slices = slices_with_class.any(axis=0).sum()
        n_stroke_slices = strokes.any(axis=(0, 1)).sum()
        assert n_stroke_slices == max(1, round(0.3 * n_class_slices))
    background = scribbles == K + 1
    assert (case.truth[background] == 0).all() and (case.ct[background] > -500).all()
    assert 0 < annotated_fraction(scribbles) < 0.05
