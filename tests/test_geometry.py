import numpy as np
import pytest

from usnav import geometry as g
from usnav.errors import InputError


def random_rigid(rng, n):
    angles = rng.uniform(-np.pi, np.pi, size=(n, 3))
    angles[:, 1] = rng.uniform(-1.5, 1.5, size=n)
    return g.matrix_from_euler_zyx(angles, rng.normal(0, 50, size=(n, 3)))


def test_euler_known_answer():
    # 90 degrees about z maps x to y.
    T = g.matrix_from_euler_zyx([0, 0, np.pi / 2], [1, 2, 3])
    np.testing.assert_allclose(g.apply(T, [1, 0, 0]), [1, 3, 3], atol=1e-12)
    # Order: x first, then y, then z (R = Rz Ry Rx).
    R = g.rotation_from_euler_zyx([np.pi / 2, np.pi / 2, 0])
    # Rx(90) maps y -> z; Ry(90) maps z -> x.
    np.testing.assert_allclose(R @ [0, 1, 0], [1, 0, 0], atol=1e-12)


def test_params_round_trip(rng):
    p = np.concatenate([rng.uniform(-3, 3, (100, 1)), rng.uniform(-1.5, 1.5, (100, 1)),
                        rng.uniform(-3, 3, (100, 1)), rng.normal(0, 10, (100, 3))], axis=1)
    T = g.matrix_from_params(p)
    np.testing.assert_allclose(g.params_from_matrix(T), p, atol=1e-9)
    np.testing.assert_allclose(g.matrix_from_params(g.params_from_matrix(T)), T, atol=1e-12)


def test_quaternion_round_trip(rng):
    T = random_rigid(rng, 200)
    q = g.quaternion_from_matrix(T)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(g.matrix_from_quaternion(q, T[:, :3, 3]), T, atol=1e-10)
    # Known answer: 180 degrees about x.
    np.testing.assert_allclose(g.quaternion_from_matrix(g.matrix_from_euler_zyx([np.pi, 0, 0])), [0, 1, 0, 0], atol=1e-12)


def test_compose_invert_apply(rng):
    A, B = random_rigid(rng, 2)
    p = rng.normal(size=(5, 7, 3))
    np.testing.assert_allclose(g.apply(g.compose(A, B), p), g.apply(A, g.apply(B, p)), atol=1e-10)
    np.testing.assert_allclose(g.compose(A, g.invert(A)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(g.invert(A), np.linalg.inv(A), atol=1e-10)
    batch = random_rigid(rng, 6)
    np.testing.assert_allclose(g.invert(batch) @ batch, np.broadcast_to(np.eye(4), (6, 4, 4)), atol=1e-12)


def test_gimbal_lock_reconstructs_matrix():
    T = g.matrix_from_euler_zyx([0.3, np.pi / 2, -0.4])
    np.testing.assert_allclose(g.matrix_from_euler_zyx(g.euler_zyx_from_matrix(T)), T, atol=1e-9)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (np.diag([1.0, 1.0, -1.0, 1.0]), "reflection"),
        (np.diag([2.0, 1.0, 1.0, 1.0]), "not orthonormal"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "last row"),
        (np.full((4, 4), np.nan), "NaN"),
    ],
)
def test_check_rigid_errors(bad, phrase):
    assert not g.is_rigid(bad)
    with pytest.raises(InputError, match=phrase) as info:
        g.check_rigid(np.stack([np.eye(4), bad]), name="tforms", path="scan.h5")
    assert "scan.h5" in str(info.value) and "tforms[1]" in str(info.value)


def test_check_rigid_accepts_rigid(rng):
    T = random_rigid(rng, 10)
    assert g.is_rigid(T).all()
    assert g.check_rigid(T) is not None
