"""Anatomies: procedural forearms differ per subject; the MNI brain loads offline; scenes can be warped."""

from __future__ import annotations

import numpy as np
import pytest

from usnav.sim.bmode import render_frame
from usnav.sim.motion import probe_pose
from usnav.sim.probe import Probe
from usnav.sim.scene import Scene, homogeneous_scene, warped_scene

PROBE = Probe(frame_hw=(128, 160), spacing_mm=(0.229, 0.221), depth_mm=24.0, fov_deg=30.0, n_lines=96)


@pytest.fixture(scope="module")
def arms():
    from usnav.sim.forearm import make_forearm

    return {k: make_forearm(s, side, voxel_mm=1.0) for k, (s, side) in {"a": (1, "RH"), "b": (2, "RH"), "al": (1, "LH")}.items()}


def test_forearm_has_the_expected_tissues_and_subjects_differ(arms):
    a, b, al = arms["a"], arms["b"], arms["al"]
    names = set(np.array(a.label_names)[np.unique(a.labels)])
    assert {"skin", "fat", "fascia", "muscle", "bone", "marrow", "vessel", "tendon"} <= names
    assert a.labels.shape != b.labels.shape or np.mean(a.labels != b.labels) > 0.05
    assert a.scatterers.seed != al.scatterers.seed != b.scatterers.seed
    # left arm: the radius is on the other side (x mirrored)
    bone = a.label_id("bone")
    xs = lambda sc: (np.nonzero(sc.labels == bone)[0] * sc.T_world_from_voxel[0, 0] + sc.T_world_from_voxel[0, 3])
    assert np.sign(np.mean(xs(a))) == -np.sign(np.mean(xs(al))) or abs(np.mean(xs(a)) + np.mean(xs(al))) < 3.0


def test_forearm_frame_shows_skin_and_shadowed_bone(arms):
    sc = arms["a"]
    T = probe_pose(sc.surface, 60.0, 0.0, 0.0, 0.0, 0.0, PROBE, press_mm=0.3)
    img = render_frame(sc, T, PROBE)
    fan = PROBE.fan_mask
    assert img[fan].mean() > 20
    assert img[~fan].max() == 0


def test_brain_from_mni_templates_offline():
    from usnav.sim.brain import BRAIN_LABELS, make_brain, mni_templates

    t1, gm, wm, A = mni_templates()
    assert t1.shape == gm.shape == wm.shape == (197, 233, 189)
    sc = make_brain(0, "RH", box_mm=70.0, voxel_mm=1.5, warp_mm=2.0)
    present = set(np.array(BRAIN_LABELS)[np.unique(sc.labels)])
    assert {"grey_matter", "white_matter", "csf", "gel"} <= present
    T = probe_pose(sc.surface, 0.0, 0.0, 0.0, 0.0, 0.0, PROBE)
    # the probe sits in the craniotomy (saline) and looks into the brain
    contact = T[:3, :3] @ PROBE.face_centre_mm + T[:3, 3]
    assert sc.sample_labels(contact[None])[0] == BRAIN_LABELS.index("gel")
    deep = contact + 20.0 * T[:3, 1]
    assert BRAIN_LABELS[sc.sample_labels(deep[None])[0]] in ("grey_matter", "white_matter", "csf", "pia_sulcus")
    img = render_frame(sc, T, PROBE)
    assert img[PROBE.fan_mask].mean() > 20


def test_warped_scene_moves_tissue_by_the_pull_field():
    base = homogeneous_scene()
    props = np.zeros((3, 4, 4, 40), dtype=np.float32)
    props[1] = 1.6
    props[0, :, :, 20:] = 1.0  # echo 1 for z >= 0 (voxel 20 at z = 0)
    T = np.diag([10.0, 10.0, 1.0, 1.0])
    T[:3, 3] = [-15.0, -15.0, -20.0]
    sc = Scene(props, T, base.scatterers)
    u = np.zeros((3, 4, 4, 40))
    u[2] = 3.0  # new(x) = old(x + 3 z)
    w = warped_scene(sc, u)
    z = np.array([-4.0, -3.5, -1.0, 1.0])
    pts = np.stack([np.zeros(4), np.zeros(4), z], axis=1)
    np.testing.assert_allclose(sc.sample(pts)[:, 0], [0, 0, 0, 1], atol=1e-6)  # boundary between z=-1 and 0
    np.testing.assert_allclose(w.sample(pts)[:, 0], [0, 0.5, 1, 1], atol=1e-6)
