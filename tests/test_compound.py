"""usnav.compound: known-answer phantoms, masks, hole filling, PLUS conformance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from usnav.compound import (
    Grid,
    HoleFiller,
    PixelMask,
    apply_hole_filling,
    compound_frames,
    reconstruct_plus,
    row_segments,
    segments_to_mask,
)
from usnav.geometry import matrix_from_euler_zyx

H, W = 60, 80
PIX = 0.25  # mm


def _sweep(n=60, tilt=0.15, step=0.3):
    """T_world_from_pixel for a sweep of parallel-ish frames along z."""
    S = np.diag([PIX, PIX, 1.0, 1.0])
    Ts = []
    for i in range(n):
        R = matrix_from_euler_zyx([tilt * np.sin(i / 9.0), 0.05 * np.cos(i / 7.0), 0.02 * i / n], [2.0, 1.0, 5.0 + step * i])
        Ts.append(R @ S)
    return np.stack(Ts)


def _slice(T, fn):
    """Sample a world function fn(points (..., 3)) -> values at every pixel."""
    ys, xs = np.mgrid[0:H, 0:W]
    pix = np.stack([xs, ys, np.zeros_like(xs), np.ones_like(xs)], -1).astype(float)
    world = np.einsum("nij,hwj->nhwi", T, pix)[..., :3]
    return fn(world)


def _box(p):
    inside = (np.abs(p[..., 0] - 12) < 5) & (np.abs(p[..., 1] - 8) < 4) & (np.abs(p[..., 2] - 14) < 5)
    return np.where(inside, 200, 40).astype(np.uint8)


def _voxel_centres(vol):
    i, j, k = np.meshgrid(*(np.arange(s) for s in vol.shape), indexing="ij")
    pts = np.stack([i, j, k, np.ones_like(i)], -1).astype(float)
    return np.einsum("ij,...j->...i", vol.T_world_from_voxel, pts)[..., :3]


@pytest.mark.parametrize("method", ["nn", "linear"])
def test_box_phantom_round_trip(method):
    T = _sweep()
    frames = _slice(T, _box)
    vol = compound_frames(frames, T, spacing_mm=1.0, method=method, mode="mean", threads=2, chunk_frames=7)
    centres = _voxel_centres(vol)
    truth = _box(centres)
    # distance to the box surface, to skip boundary voxels where a 1 mm voxel mixes both values
    d = np.minimum.reduce([np.abs(np.abs(centres[..., 0] - 12) - 5), np.abs(np.abs(centres[..., 1] - 8) - 4), np.abs(np.abs(centres[..., 2] - 14) - 5)])
    hit = vol.weight > 0
    core = hit & (d > 1.5)
    assert core.sum() > 2000
    assert np.array_equal(vol.array[core], truth[core])
    assert hit.mean() > 0.5


def test_linear_ramp_is_reproduced():
    T = _sweep()

    def ramp(p):
        return (3.0 * p[..., 0] + 2.0 * p[..., 1] + 1.5 * p[..., 2]).astype(np.float32)

    frames = _slice(T, ramp)
    vol = compound_frames(frames, T, spacing_mm=0.8, method="linear", mode="mean")
    hit = vol.weight > 0.5
    err = np.abs(vol.array[hit] - ramp(_voxel_centres(vol))[hit])
    # trilinear splatting of a linear function is exact up to the pixel sampling (0.25 mm * gradient)
    assert err.mean() < 0.5 and vol.array.dtype == np.float32


def test_modes_max_latest_and_threads_agree():
    T = _sweep(n=30)
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (30, H, W), dtype=np.uint8)
    grid = Grid((0.0, 0.0, 4.0), (0.7, 0.7, 0.7), (35, 30, 20))
    for mode in ("mean", "max", "latest"):
        a = compound_frames(frames, T, grid=grid, method="nn", mode=mode, threads=1)
        b = compound_frames(frames, T, grid=grid, method="nn", mode=mode, threads=2, chunk_frames=4)
        assert np.array_equal(a.array, b.array), mode
    mx = compound_frames(frames, T, grid=grid, mode="max").array
    mean = compound_frames(frames, T, grid=grid, mode="mean").array
    assert (mx >= mean).all() and (mx > mean).any()
    # LATEST: a constant last frame wins wherever it lands
    frames2 = frames.copy()
    frames2[-1] = 7
    last = compound_frames(frames2[-1:], T[-1:], grid=grid, mode="latest")
    lat = compound_frames(frames2, T, grid=grid, mode="latest")
    assert (lat.array[last.weight > 0] == 7).all()


def test_invalid_frames_are_skipped():
    T = _sweep(n=10)
    frames = np.full((10, H, W), 100, np.uint8)
    frames[3] = 255
    T2 = T.copy()
    T2[5] = np.nan
    valid = np.ones(10, bool)
    valid[3] = False
    vol = compound_frames(frames, T2, spacing_mm=1.0, valid=valid)
    assert vol.array.max() == 100


def test_fan_mask_segments():
    m = PixelMask(clip_origin_px=(5, 0), clip_size_px=(70, 58), fan_angles_deg=(-30, 30), fan_origin_px=(40, 0),
                  radius_start_px=10, radius_stop_px=50)
    mask = segments_to_mask(row_segments(m, H, W), H, W)
    ys, xs = np.mgrid[0:H, 0:W]
    r = np.hypot(xs - 40, ys)
    ang = np.degrees(np.arctan2(xs - 40, ys))
    inside = (r > 11) & (r < 49) & (np.abs(ang) < 25)  # PLUS keeps a one-pixel margin inside the edges & (xs >= 5) & (xs <= 75)
    outside = (r < 9) | (r > 51) | (np.abs(ang) > 32) | (ys > 58)
    assert mask[inside].all() and not mask[outside].any()
    # fan pixels only reach the volume
    T = _sweep(n=5)
    frames = np.zeros((5, H, W), np.uint8)
    frames[:, ~mask] = 255
    frames[:, mask] = 10
    vol = compound_frames(frames, T, spacing_mm=0.5, mask=m)
    assert vol.array[vol.weight > 0].max() == 10


def test_stick_hole_filling_interpolates():
    vol = np.zeros((5, 5, 9), np.float32)
    w = np.zeros_like(vol)
    vol[:, :, 0], w[:, :, 0] = 10, 1
    vol[:, :, 8], w[:, :, 8] = 90, 1
    out = apply_hole_filling(vol, w, [HoleFiller("stick", stick_length=9)])
    # PLUS weights the far end by (reverse steps + 1) / (forward + reverse + 1)
    x = np.arange(1, 8)
    wf = (x + 1) / 9.0
    assert np.allclose(out[2, 2, 1:8], (1 - wf) * 10 + wf * 90, atol=1e-4)
    assert out[2, 2, 0] == 10 and out[2, 2, 8] == 90
    short = apply_hole_filling(vol, w, [HoleFiller("stick", stick_length=4)])
    assert (short[2, 2, 3:6] == 0).all()


@pytest.mark.parametrize("kind", ["gaussian", "gaussian_accumulation", "distance_weight_inverse", "nearest_neighbor"])
def test_kernel_hole_fillers_fill_constant(kind):
    vol = np.full((7, 7, 7), 50, np.float32)
    w = np.ones_like(vol)
    w[3, 3, 3] = 0
    vol[3, 3, 3] = 0
    out = apply_hole_filling(vol, w, [HoleFiller(kind, size=3, stdev=1.0, min_ratio=0.5)])
    assert out[3, 3, 3] == pytest.approx(50)
    # min_ratio not met -> the hole stays 0
    out2 = apply_hole_filling(vol, w, [HoleFiller(kind, size=3, min_ratio=0.99)])
    assert out2[3, 3, 3] == 0


@pytest.mark.parametrize("config, ref", [("NN_MEAN", "NNMEAN"), ("LN_MAXI", "LNMAXI")])
def test_plus_reference_reconstructions(plus_dir: Path, config, ref):
    from usnav.io.plus import read_config, read_metaimage, read_sequence

    seq = read_sequence(plus_dir / "SpinePhantomFreehand.igs.mha")
    cfg = read_config(plus_dir / f"PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_{config}.xml")
    result = reconstruct_plus(seq, cfg)
    expected, header = read_metaimage(plus_dir / f"vtkVolumeReconstructorTest{ref}volumeRef.mha")
    mine = np.asarray(result.volume.array).transpose(2, 1, 0)
    assert mine.shape == expected.shape
    assert np.allclose(result.volume.spacing_mm, [float(v) for v in header["ElementSpacing"].split()])
    assert np.abs(result.volume.origin_mm - [float(v) for v in header["Offset"].split()]).max() < 0.01
    diff = np.abs(mine.astype(int) - expected.astype(int))
    assert (diff <= 1).mean() >= 0.99
    assert diff.mean() < 0.05


FAN_CONFIG = """<PlusConfiguration version="2.1">
  <CoordinateDefinitions>
    <Transform From="Image" To="Probe" Matrix="0.3 0 0 -15  0 0.3 0 0  0 0 0.3 0  0 0 0 1"/>
  </CoordinateDefinitions>
  <VolumeReconstruction OutputSpacing="0.6 0.6 0.6" ClipRectangleOrigin="5 2" ClipRectangleSize="90 70"
    FanAnglesDeg="-40 35" FanOriginPixel="50 0" FanRadiusStartPixel="12" FanRadiusStopPixel="70"
    Interpolation="{interp}" CompoundingMode="{mode}" FillHoles="OFF"/>
</PlusConfiguration>
"""


@pytest.mark.parametrize("interp, mode, fast", [("NEAREST_NEIGHBOR", "LATEST", ("nn", "latest")), ("NEAREST_NEIGHBOR", "MAXIMUM", ("nn", "max")), ("LINEAR", "LATEST", ("linear", "latest"))])
def test_plus_path_with_fan_matches_fast_path(tmp_path, rng, interp, mode, fast):
    """The PLUS-conformant path (fixed point, PLUS fan rows) and the fast path
    agree on a fan-masked sweep, and invalid frames are skipped by both."""
    from usnav.geometry import matrix_from_params
    from usnav.io.plus import frame_transforms, read_config, read_sequence, write_sequence

    n = 12
    frames = rng.integers(0, 200, (n, 80, 100), dtype=np.uint8)
    frames[4] = 255  # marked invalid below: must not show up
    probe = np.stack([matrix_from_params([0.02 * i, 0.1 * np.sin(i), 0.0, 0.0, 0.0, 0.8 * i]) for i in range(n)])
    ref = np.broadcast_to(matrix_from_params([0.1, 0.2, 0.3, 10, 20, 30]), (n, 4, 4))
    ok = np.ones(n, bool)
    ok[4] = False
    seq_path = write_sequence(tmp_path / "s.igs.mha", frames, {"ProbeToTracker": probe, "ReferenceToTracker": ref}, transform_valid={"ProbeToTracker": ok})
    (tmp_path / "c.xml").write_text(FAN_CONFIG.format(interp=interp, mode=mode))
    seq, cfg = read_sequence(seq_path), read_config(tmp_path / "c.xml")
    res = reconstruct_plus(seq, cfg)
    assert res.frames_inserted == n - 1
    v = res.volume
    T, valid = frame_transforms(seq, cfg)
    from usnav.compound.plus import plus_mask

    f = compound_frames(seq.frames, T, grid=Grid(tuple(v.origin_mm), tuple(v.spacing_mm), v.shape), method=fast[0], mode=fast[1], mask=plus_mask(cfg), valid=valid)
    a, b = np.asarray(v.array).astype(int), np.asarray(f.array).astype(int)
    assert (res.accumulation > 0).mean() > 0.05
    assert (np.abs(a - b) <= 1).mean() > 0.98
    assert a.max() < 255 and b.max() < 255


def test_plus_pixel_rejection(tmp_path, rng):
    from usnav.geometry import matrix_from_params
    from usnav.io.plus import read_config, read_sequence, write_sequence

    n = 6
    frames = np.where(rng.random((n, 80, 100)) < 0.5, 20, 150).astype(np.uint8)
    probe = np.stack([matrix_from_params([0, 0, 0, 0, 0, 0.8 * i]) for i in range(n)])
    ref = np.broadcast_to(np.eye(4), (n, 4, 4))
    seq = read_sequence(write_sequence(tmp_path / "s.mha", frames, {"ProbeToTracker": probe, "ReferenceToTracker": ref}))
    text = FAN_CONFIG.format(interp="NEAREST_NEIGHBOR", mode="MAXIMUM").replace('FillHoles="OFF"', 'FillHoles="OFF" PixelRejectionThreshold="100"')
    (tmp_path / "c.xml").write_text(text.replace("MAXIMUM", "MEAN"))
    res = reconstruct_plus(seq, read_config(tmp_path / "c.xml"))
    hit = res.accumulation > 0
    assert hit.any() and (np.asarray(res.volume.array)[hit] == 150).all()
