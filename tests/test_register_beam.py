"""usnav.register.beam: a known cone apex is recovered from the field-of-view mask; non-cones are refused."""

from __future__ import annotations

import numpy as np
import torch

from usnav.register.beam import beam_directions, fit_cone
from usnav.register.features import gaussian_blur
from usnav.register.lc2 import _edge_strength, lc2_similarity
from usnav.sim.remind import Probe, _orthonormal_frame

N = 96


def _cone_mask(apex, axis, half_angle_deg=30.0, r_min=3.0, r_max=80.0) -> np.ndarray:
    frame = _orthonormal_frame(np.asarray(axis, float) / np.linalg.norm(axis), 0.3)
    probe = Probe(np.asarray(apex, float), frame, np.radians(half_angle_deg), r_min, r_max)
    grid = np.stack(np.meshgrid(*[np.arange(N, dtype=np.float64)] * 3, indexing="ij"), -1).reshape(-1, 3)
    inside = probe.beam_coords(torch.from_numpy(grid))[3]
    return inside.numpy().reshape(N, N, N)


def test_fit_cone_recovers_a_known_apex_of_a_tilted_sector():
    apex = np.array([44.0, 50.0, 6.0])
    for axis in ([0.0, 0.0, 1.0], [0.25, -0.2, 1.0]):
        fit = fit_cone(_cone_mask(apex, axis))
        assert fit.accepted, fit
        assert np.linalg.norm(fit.apex_vox - apex) < 2.5, (axis, fit.apex_vox)
        assert fit.iou > 0.9


def test_fit_cone_refuses_masks_that_are_not_a_cone():
    box = np.zeros((N, N, N), bool)
    box[20:70, 15:80, 10:60] = True
    assert not fit_cone(box).accepted
    ball = np.linalg.norm(np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"), -1) - 48.0, axis=-1) < 30
    assert not fit_cone(ball).accepted
    assert not fit_cone(np.zeros((N, N, N), bool)).accepted


def test_beam_directions_are_unit_vectors_pointing_away_from_the_apex():
    apex = np.array([10.0, 20.0, -5.0])
    d = beam_directions(apex, [4, 0, 2], (8, 6, 5), 2)
    assert d.shape == (3, 8, 6, 5)
    assert torch.allclose(d.norm(dim=0), torch.ones(8, 6, 5), atol=1e-5)
    # cell (1, 2, 3) covers fine voxels 6-7, 4-5, 8-9: centre (6.5, 4.5, 8.5)
    v = np.array([6.5, 4.5, 8.5]) - apex
    assert np.allclose(d[:, 1, 2, 3].numpy(), v / np.linalg.norm(v), atol=1e-6)


def test_beam_gradient_explains_an_incidence_dependent_echo_better_than_the_gradient_magnitude():
    g = torch.Generator().manual_seed(2)
    m = gaussian_blur(torch.rand(48, 48, 48, generator=g), 2.0)
    m = torch.sigmoid(8 * (m - m.mean()) / m.std())
    d = beam_directions(np.array([24.0, 24.0, -30.0]), [0, 0, 0], (48, 48, 48), 1)
    fixed = 0.3 * m + 2.0 * _edge_strength(m, d)
    w = torch.ones(48, 48, 48)
    s_beam = float(lc2_similarity(fixed, torch.stack([m, _edge_strength(m, d)]), w, 7, 3))
    s_mag = float(lc2_similarity(fixed, torch.stack([m, _edge_strength(m)]), w, 7, 3))
    assert s_beam > 0.99
    assert s_mag < s_beam - 0.05, (s_mag, s_beam)
