"""usnav.register: known-answer recovery on small synthetic volumes (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usnav.geometry.rigid import rotation_from_euler_zyx
from usnav.metrics.remind import landmark_errors_mm
from usnav.register.features import gaussian_blur
from usnav.register.pipeline import RegistrationConfig, compose_affine_field, register_pair, warp_image

N = 64


def _phantom(seed: int = 0) -> np.ndarray:
    """Blobby smooth volume with structure at several scales (64^3)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, N, N, generator=g)
    img = gaussian_blur(x, 2.5) * 4 + gaussian_blur(torch.rand(N, N, N, generator=g), 1.2) * 2
    img = (img - img.mean()) / img.std()
    return torch.tanh(img * 2).numpy().astype(np.float32) + 1.0


def _fov() -> np.ndarray:
    c = (N - 1) / 2
    x = np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"), -1) - c
    return np.linalg.norm(x, axis=-1) < 26


def _smooth_field(seed: int, amp_vox: float) -> np.ndarray:
    """Sum of low-frequency sinusoids, max magnitude about ``amp_vox`` per channel."""
    rng = np.random.default_rng(seed)
    x = np.stack(np.meshgrid(*[np.arange(N, dtype=np.float64)] * 3, indexing="ij"), -1)
    u = np.zeros((N, N, N, 3))
    for k in range(3):
        for _ in range(2):
            f = rng.uniform(-1.5, 1.5, 3) / N
            u[..., k] += np.sin(2 * np.pi * x @ f + rng.uniform(0, 2 * np.pi))
    return (u / 2 * amp_vox).astype(np.float32)


def _cfg(**kw) -> RegistrationConfig:
    # small-grid settings (the defaults are tuned for 256^3 at 0.5 mm: 4 mm Adam control grid)
    base = dict(fine_factor=2, coarse_factor=4, max_shift_mm=12.0, adam_iters=60, adam_ctrl=1, adam_lambda=0.5, erode=1)
    base.update(kw)
    return RegistrationConfig(**base)


def _points(fov: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    inner = np.argwhere(fov)
    return inner[rng.choice(len(inner), n, replace=False)].astype(np.float64)


def test_known_smooth_deformation_recovered_subvoxel():
    mov = _phantom(1)
    u_true = _smooth_field(2, 8.0)
    fov = _fov()
    fix = warp_image(mov, u_true) * fov
    pts = _points(fov & (np.linalg.norm(np.argwhere(np.ones((N, N, N))).reshape(N, N, N, 3) - 31.5, axis=-1) < 20), 40, 3)
    moved = pts + np.array([u_true[tuple(p)] for p in pts.astype(int)])
    sp = (1.0, 1.0, 1.0)
    init = landmark_errors_mm(None, pts, moved, sp).mean()
    res = register_pair(fix, [mov], sp, fov_mask=fov, cavity_mask=np.zeros_like(fov), config=_cfg(rigid=False, adam_iters=40))
    err = landmark_errors_mm(res.disp_vox, pts, moved, sp)
    assert init > 2.5
    assert err.mean() < 0.6, (init, err.mean())
    assert res.disp_vox.shape == (N, N, N, 3) and res.disp_vox.dtype == np.float32


def test_rigid_init_recovers_15deg_10mm():
    mov = _phantom(4)
    fov = _fov()
    R = rotation_from_euler_zyx(np.deg2rad([0.0, 0.0, 15.0]))
    c = np.full(3, (N - 1) / 2)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = c - R @ c + np.array([8.0, -6.0, 0.0])  # 15 deg about axis 2 and 10 mm
    grid = np.stack(np.meshgrid(*[np.arange(N, dtype=np.float32)] * 3, indexing="ij"), -1)
    u_true = compose_affine_field(T, np.zeros((N, N, N, 3), np.float32))
    assert np.allclose(u_true[5, 6, 7], T[:3, :3] @ grid[5, 6, 7] + T[:3, 3] - grid[5, 6, 7], atol=1e-4)
    fix = warp_image(mov, u_true) * fov
    pts = _points(fov, 30, 5)
    moved = pts @ T[:3, :3].T + T[:3, 3]
    sp = (1.0, 1.0, 1.0)
    res = register_pair(fix, [mov], sp, fov_mask=fov, cavity_mask=np.zeros_like(fov),
                        config=_cfg(deformable=False, max_rot_deg=15.0))
    err = landmark_errors_mm(res.disp_vox, pts, moved, sp)
    assert landmark_errors_mm(None, pts, moved, sp).mean() > 8.0
    assert err.mean() < 1.0, err.mean()


@pytest.mark.parametrize("n_mov", [1, 2])
def test_identity_when_images_agree(n_mov):
    mov = _phantom(6)
    fov = _fov()
    res = register_pair(mov * fov, [mov] * n_mov, (1.0, 1.0, 1.0), fov_mask=fov, cavity_mask=np.zeros_like(fov),
                        config=_cfg(rigid=False, adam_iters=20))
    assert np.abs(res.disp_vox[fov]).mean() < 0.3


def test_unfold_removes_folding_and_keeps_smooth_fields():
    from usnav.register.deformable import jacobian_det, unfold

    u = torch.zeros(24, 24, 24, 3)
    u[12, 12, 12, 0], u[11, 12, 12, 0] = 3.0, -3.0  # a fold
    assert float(jacobian_det(u).min()) < 0
    v, n = unfold(u, 0.3)
    assert n >= 1 and float(jacobian_det(v).min()) > 0.3
    s = torch.from_numpy(_smooth_field(7, 2.0)[:24, :24, :24].copy())
    w, m = unfold(s, 0.3)
    assert m == 0 and torch.equal(w, s)
