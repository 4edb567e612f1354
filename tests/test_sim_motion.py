"""Probe motion: rigid poses on the skin surface, protocols, hand-like speeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from usnav.geometry import is_rigid
from usnav.sim.forearm import ForearmSurface
from usnav.sim.motion import FRAME_RATE_HZ, PROTOCOLS_2024, probe_pose, trajectory
from usnav.sim.probe import Probe

SURFACE = ForearmSurface(length_mm=240.0, a0=28.0, a1=34.0, b0=18.0, b1=24.0)
PROBE = Probe()


def _contact(T: np.ndarray) -> np.ndarray:
    return (T[..., :3, :3] @ PROBE.face_centre_mm + T[..., :3, 3])


def _surface_distance(p: np.ndarray) -> np.ndarray:
    """Signed distance-like residual of the elliptic skin surface (0 on it), mm."""
    a, b = SURFACE.half_axes(p[:, 1])
    return (np.sqrt((p[:, 0] / a) ** 2 + ((p[:, 2] + b) / b) ** 2) - 1.0) * b


def test_probe_pose_puts_face_on_surface_and_points_inwards():
    T = probe_pose(SURFACE, 100.0, 3.0, 0.0, 0.0, 0.0, PROBE)
    assert is_rigid(T)
    p, along, across, n = SURFACE.point_and_frame(100.0, 3.0)
    np.testing.assert_allclose(_contact(T), p, atol=1e-9)
    np.testing.assert_allclose(T[:3, 1], -n, atol=1e-9)  # image depth axis into the tissue
    np.testing.assert_allclose(T[:3, 0], across, atol=1e-9)  # yaw 0: transverse view
    T90 = probe_pose(SURFACE, 100.0, 3.0, math.pi / 2, 0.0, 0.0, PROBE)
    np.testing.assert_allclose(T90[:3, 0], along, atol=1e-9)
    # fanning tilts the plane out of plane about the lateral axis, the contact stays put
    Tf = probe_pose(SURFACE, 100.0, 3.0, 0.0, 0.3, 0.0, PROBE)
    np.testing.assert_allclose(_contact(Tf), p, atol=1e-9)
    np.testing.assert_allclose(Tf[:3, 0], T[:3, 0], atol=1e-9)
    assert math.degrees(math.acos(Tf[:3, 2] @ T[:3, 2])) == pytest.approx(math.degrees(0.3))


@pytest.mark.parametrize("protocol", ["rotation", "Par_C_DtP", "Per_S_PtD", "Per_L_DtP"])
def test_trajectory_rigid_on_skin_and_hand_like(protocol):
    n = 600
    T = trajectory(SURFACE, protocol, n, PROBE, seed=3)
    assert T.shape == (n, 4, 4)
    assert np.all(is_rigid(T))
    c = _contact(T)
    d = _surface_distance(c)
    assert np.all(d < 0.0) and np.all(d > -1.5)  # on the skin, pressed in by under 1.5 mm
    step = np.linalg.norm(np.diff(c, axis=0), axis=1) * FRAME_RATE_HZ  # mm/s
    assert np.max(step) < 60.0  # a hand, not a jump
    # deterministic per seed, different across seeds
    np.testing.assert_array_equal(T, trajectory(SURFACE, protocol, n, PROBE, seed=3))
    assert not np.allclose(T, trajectory(SURFACE, protocol, n, PROBE, seed=4))


def test_rotation_protocol_turns_about_90_degrees_near_one_spot():
    T = trajectory(SURFACE, "rotation", 1500, PROBE, seed=1)
    c = _contact(T)
    assert np.ptp(c[:, 1]) < 15.0  # stays near one spot along the arm
    x0, x1 = T[0, :3, 0], T[-1, :3, 0]
    turn = math.degrees(math.acos(abs(float(x0 @ x1))))
    assert 60.0 < turn <= 90.0
    # fanning: the plane normal swings by tens of degrees at some point
    normals = T[:, :3, 2]
    swing = np.degrees(np.arccos(np.clip(np.abs(normals @ normals[0]), 0, 1)))
    assert swing.max() > 20.0


@pytest.mark.parametrize("name", PROTOCOLS_2024)
def test_2024_protocols_sweep_along_the_arm(name):
    T = trajectory(SURFACE, name, 300, PROBE, seed=2)
    c = _contact(T)
    travel = c[-1, 1] - c[0, 1]
    assert abs(travel) > 100.0
    assert (travel > 0) == name.endswith("DtP")
    # Par: image lateral axis along the sweep; Per: across it (sweep is mostly along y)
    lateral_along_arm = np.abs(T[len(T) // 2, 1, 0])
    if name.startswith("Par"):
        assert lateral_along_arm > 0.7
    else:
        assert lateral_along_arm < 0.7
