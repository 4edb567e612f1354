"""usnav.metrics.remind: TRE/TRE30/SDlogJ known answers."""

from __future__ import annotations

import numpy as np

from usnav.metrics import remind as m


def test_identity_tre_equals_initial_distance(rng):
    f = rng.uniform(5, 25, (20, 3))
    mv = f + rng.normal(0, 3, (20, 3))
    sp = np.array([0.5, 0.6, 0.7])
    disp = np.zeros((32, 32, 32, 3), np.float32)
    expect = np.linalg.norm((mv - f) * sp, axis=1)
    np.testing.assert_allclose(m.landmark_errors_mm(disp, f, mv, sp), expect, atol=1e-12)
    s = m.score_pair("p", disp, f, mv, sp)
    assert abs(s.tre_mm - expect.mean()) < 1e-12 and s.tre_mm == s.tre_initial_mm
    hard = np.sort(expect)[::-1][:6]  # ceil(0.3 * 20) = 6 hardest
    assert abs(s.tre30_mm - hard.mean()) < 1e-12
    assert s.sdlogj == 0.0 and s.folding_fraction == 0.0


def test_constant_field_recovers_translation():
    f = np.array([[10.0, 11.0, 12.0], [15.2, 9.7, 20.1]])
    t = np.array([1.5, -2.0, 0.25])
    disp = np.broadcast_to(t, (32, 32, 32, 3)).astype(np.float32)
    assert m.tre_mm(disp, f, f + t, (0.5, 0.5, 0.5)) < 1e-5
    # cubic spline with constant 0 outside: near the border the value drops
    assert np.all(np.abs(m.interpolate_displacement(disp, np.array([[-3.0, 10, 10]]))) < 1.0)


def test_jacobian_of_linear_field():
    x = np.stack(np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij"), -1)
    A = np.array([[0.1, 0.02, 0.0], [0.0, -0.05, 0.01], [0.03, 0.0, 0.2]])
    disp = (x @ A.T).astype(np.float32)
    jd = m.jacobian_determinant(disp)
    assert jd.shape == (16, 16, 16)
    np.testing.assert_allclose(jd, np.linalg.det(np.eye(3) + A), rtol=1e-5)
    assert m.sdlogj(disp) < 1e-5
    folded = disp.copy()
    folded[..., 0] = -2.0 * x[..., 0]
    assert m.folding_fraction(folded) == 1.0
