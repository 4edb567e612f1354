"""Physics of the B-mode simulator: speckle statistics, decorrelation, determinism, shadows, attenuation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from usnav.geometry import matrix_from_euler_zyx
from usnav.sim.bmode import BModeParams, render_frame, render_polar
from usnav.sim.probe import Probe
from usnav.sim.scatterers import ScattererField, slab_scatterers
from usnav.sim.scene import Scene, homogeneous_scene


@pytest.fixture(scope="module")
def probe() -> Probe:
    # small field of view and frame for speed; same beam model as the default probe
    p = Probe(frame_hw=(128, 160), spacing_mm=(0.229, 0.221), depth_mm=24.0, fov_deg=30.0, n_lines=128)
    p.check_fits()
    return p


@pytest.fixture(scope="module")
def scene() -> Scene:
    return homogeneous_scene(seed=5)


def _pose(probe: Probe, shift_image_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """An oblique pose (not aligned with the scatterer lattice), shifted along image axes."""
    T = matrix_from_euler_zyx([0.31, -0.22, 0.13], [3.0, -2.0, 1.0])
    S = np.eye(4)
    S[:3, 3] = np.asarray(shift_image_mm) - probe.face_centre_mm
    return T @ S


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_probe_geometry_fits_and_scaling():
    p = Probe()
    p.check_fits()
    assert p.frame_hw == (480, 640)
    assert p.spacing_mm == (0.229, 0.221)
    mask = p.fan_mask
    assert mask.shape == (480, 640)
    assert not mask[0, 0] and not mask[-1, -1] and mask[240, 320]
    # scaled frame keeps the field of view
    q = Probe.for_frame_size(120, 160)
    assert q.spacing_mm[0] * 160 == pytest.approx(0.229 * 640)
    q.check_fits()


def test_scatterer_field_is_world_fixed():
    field = ScattererField(seed=3, spacing_mm=0.2)
    T_iw = matrix_from_euler_zyx([0.4, 0.1, -0.3], [5.0, 1.0, -2.0])
    region = np.array([[-5.0, -5.0], [5.0, 5.0]])
    s = slab_scatterers(field, T_iw, region, lambda x, y: np.full(np.shape(x), 0.6), 0.6)
    assert len(s) > 1000
    pts_img = np.stack([s.x, s.y, s.z], axis=1).astype(np.float64)
    world = (pts_img - T_iw[:3, 3]) @ T_iw[:3, :3]
    cells = np.rint(world / field.spacing_mm).astype(np.int64)
    pos, amp = field.scatterers_in_cells(cells)
    np.testing.assert_allclose(pos, world, atol=1e-4)  # same scatterer, generated from its world cell alone
    np.testing.assert_array_equal(amp, s.amplitude)
    # a second, different plane through the same region sees the same scatterers where the slabs overlap
    T2 = matrix_from_euler_zyx([0.4, 0.1, -0.3], [5.0, 1.0, -2.3])
    s2 = slab_scatterers(field, T2, region, lambda x, y: np.full(np.shape(x), 0.6), 0.6)
    w2 = (np.stack([s2.x, s2.y, s2.z], 1).astype(np.float64) - T2[:3, 3]) @ T2[:3, :3]
    c1 = {tuple(c) for c in cells}
    c2 = {tuple(c) for c in np.rint(w2 / field.spacing_mm).astype(np.int64)}
    assert len(c1 & c2) > 0.3 * len(c1)
    # amplitudes: zero mean, unit variance
    assert abs(float(np.mean(s.amplitude))) < 0.05
    assert float(np.mean(s.amplitude**2)) == pytest.approx(1.0, abs=0.05)


def test_same_pose_renders_identical_frames(probe, scene):
    a = render_frame(scene, _pose(probe), probe)
    b = render_frame(scene, _pose(probe), probe)
    assert a.dtype == np.uint8 and a.shape == probe.frame_hw
    np.testing.assert_array_equal(a, b)
    assert np.all(a[~probe.fan_mask] == 0)  # black outside the fan
    assert a[probe.fan_mask].mean() > 40


def test_envelope_snr_is_rayleigh(probe, scene):
    p = render_polar(scene, _pose(probe), probe)
    env = np.abs(p.speckle)
    region = env[20:230, 8:120]
    snr = region.mean() / region.std()
    assert snr == pytest.approx(1.91, abs=0.1)
    # normalisation: unit mean intensity for a unit-echo medium at every depth
    assert np.mean(np.abs(p.speckle[20:120]) ** 2) == pytest.approx(1.0, abs=0.1)
    assert np.mean(np.abs(p.speckle[130:240]) ** 2) == pytest.approx(1.0, abs=0.1)


def test_out_of_plane_decorrelation_follows_beam_profile(probe, scene):
    ref = render_polar(scene, _pose(probe), probe)
    band = slice(140, 240)  # depths 14-24 mm
    depth = float(np.mean(probe.depth_samples_mm[band]))
    I0 = np.abs(ref.speckle[band]) ** 2
    corrs = []
    for dz in (0.2, 0.4, 0.8, 1.6):
        I1 = np.abs(render_polar(scene, _pose(probe, (0, 0, dz)), probe).speckle[band]) ** 2
        c = _corr(I0, I1)
        corrs.append(c)
        assert c == pytest.approx(float(probe.expected_elevational_correlation(dz, depth)), abs=0.08)
    assert all(a > b for a, b in zip(corrs, corrs[1:]))


def test_frames_0p2mm_out_of_plane_highly_but_not_perfectly_correlated(probe, scene):
    a = render_frame(scene, _pose(probe), probe)
    b = render_frame(scene, _pose(probe, (0.0, 0.0, 0.2)), probe)
    m = probe.fan_mask
    r = _corr(a[m], b[m])
    assert 0.8 < r < 0.995


def test_in_plane_shift_keeps_speckle_after_compensation(probe, scene):
    sx, sy = probe.spacing_mm
    k = 2
    a = render_frame(scene, _pose(probe), probe)
    b = render_frame(scene, _pose(probe, (k * sx, 0.0, 0.0)), probe)  # probe moves +x: content moves -x
    m = probe.fan_mask[:, k:] & probe.fan_mask[:, :-k]
    m[: int(0.5 * m.shape[0])] = False  # skip the near field
    compensated = _corr(a[:, k:][m], b[:, :-k][m])
    uncompensated = _corr(a[:, k:][m], b[:, k:][m])
    assert compensated > 0.85
    assert compensated > uncompensated + 0.2


def test_compiled_and_numpy_paths_agree(probe, scene):
    a = render_polar(scene, _pose(probe), probe, BModeParams(compiled=True))
    b = render_polar(scene, _pose(probe), probe, BModeParams(compiled=False))
    assert a.n_scatterers == b.n_scatterers
    assert _corr(np.abs(a.speckle), np.abs(b.speckle)) > 0.995


def _layered_scene(layers: list[tuple[float, float, float, float, float]], seed: int = 1) -> Scene:
    """Scene with horizontal layers (z_top, z_bottom, echo, impedance, attenuation); z up, probe at z=0."""
    from usnav.sim.scene import PlanarSurface

    n = 200
    z = np.linspace(-60.0, 5.0, n)
    props = np.empty((3, 2, 2, n), dtype=np.float32)
    props[:] = np.array([0.0, 1.5, 0.0], dtype=np.float32)[:, None, None, None]
    for top, bottom, echo, imp, att in layers:
        sel = (z <= top) & (z > bottom)
        props[:, :, :, sel] = np.array([echo, imp, att], dtype=np.float32)[:, None, None, None]
    T = np.diag([400.0, 400.0, z[1] - z[0], 1.0])
    T[:3, 3] = [-200.0, -200.0, z[0]]
    surface = PlanarSurface(origin=np.zeros(3), u=np.array([0.0, 1.0, 0.0]), v=np.array([-1.0, 0.0, 0.0]))
    return Scene(props, T, ScattererField(seed=seed), surface=surface)


def _frontal_pose(probe: Probe) -> np.ndarray:
    from usnav.sim.motion import probe_pose

    sc = _layered_scene([])
    return probe_pose(sc.surface, 3.1, 1.7, 0.2, 0.0, 0.0, probe)


def test_bone_casts_a_shadow(probe):
    soft = (0.0, -60.0, 1.0, 1.6, 0.5)
    bone = (-10.0, -13.0, 2.5, 7.8, 20.0)
    scene = _layered_scene([soft, bone, (-13.0, -60.0, 1.0, 1.6, 0.5)])
    p = render_polar(scene, _frontal_pose(probe), probe)
    above = np.mean(p.envelope[40:80] ** 2)  # 4-8 mm
    surface = np.max(p.envelope[95:110].mean(axis=1) ** 2)  # the bone surface (~10 mm)
    below = np.mean(p.envelope[160:220] ** 2)  # 16-22 mm
    assert 10 * math.log10(surface / above) > 10.0  # bright specular bone surface
    assert 10 * math.log10(above / below) > 40.0  # acoustic shadow


def test_attenuation_and_tgc(probe):
    alpha = 0.7
    scene = _layered_scene([(5.0, -60.0, 1.0, 1.6, alpha)])
    pose = _frontal_pose(probe)
    flat = render_polar(scene, pose, probe, BModeParams(tgc_db_cm_mhz=alpha))
    raw = render_polar(scene, pose, probe, BModeParams(tgc_db_cm_mhz=0.0))
    d = probe.depth_samples_mm
    rows = (d > 3) & (d < 23)
    db_flat = 10 * np.log10(np.mean(flat.envelope[rows] ** 2, axis=1))
    db_raw = 10 * np.log10(np.mean(raw.envelope[rows] ** 2, axis=1))
    slope_flat = np.polyfit(d[rows], db_flat, 1)[0]
    slope_raw = np.polyfit(d[rows], db_raw, 1)[0]
    expected = -2 * alpha * probe.center_freq_mhz / 10.0  # dB per mm, two-way
    assert slope_raw == pytest.approx(expected, rel=0.1)
    assert abs(slope_flat) < 0.1 * abs(expected)


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (0.785, 0.6155, 0.0), (1.2, -0.5, 2.0)])
def test_compiled_kernel_misses_no_scatterer_of_the_slab(angles):
    """The fan-hull column walk and its elevational bound against brute force over the slab's bounding box."""
    from usnav.sim.bmode import _beam_tissue, _bin_scatterers, _fan_polygon, _render_slab_compiled
    from usnav.sim.scatterers import SlabScatterers, column_grid

    probe = Probe(frame_hw=(64, 80), spacing_mm=(0.229, 0.221), depth_mm=10.0, fov_deg=24.0, n_lines=48)
    scene = homogeneous_scene(seed=3)
    T = matrix_from_euler_zyx(list(angles), [3.0, -2.0, 1.0])
    S = np.eye(4)
    S[:3, 3] = -probe.face_centre_mm
    T = T @ S
    T_iw = np.linalg.inv(T)
    offs, echo_c, _, _ = _beam_tissue(scene, T, probe, BModeParams())
    fast, _ = _render_slab_compiled(scene, T_iw, probe, offs, echo_c, 4, 2, parallel=False)
    hmax = probe.max_half_thickness_mm
    _, _, _, lo, hi, _ = column_grid(T_iw, _fan_polygon(probe), scene.scatterers.spacing_mm, hmax)
    cells = np.stack(np.meshgrid(*[np.arange(lo[k] - 2, hi[k] + 3) for k in range(3)], indexing="ij"), -1)
    pos, amp = scene.scatterers.scatterers_in_cells(cells.reshape(-1, 3))
    img = (pos @ T_iw[:3, :3].T + T_iw[:3, 3]).astype(np.float32)
    keep = np.abs(img[:, 2]) <= hmax + 0.01
    slab = SlabScatterers(img[keep, 0].copy(), img[keep, 1].copy(), img[keep, 2].copy(), amp[keep])
    ref, _ = _bin_scatterers([slab], probe, offs, echo_c, 4, 2)
    assert np.linalg.norm(fast - ref) / np.linalg.norm(ref) < 1e-3
