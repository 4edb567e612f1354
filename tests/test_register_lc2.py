"""usnav.register.lc2: the similarity's known answers and a known shift recovered from an LC2-type image."""

from __future__ import annotations

import numpy as np
import torch

from usnav.metrics.remind import landmark_errors_mm
from usnav.register.features import downsample, gaussian_blur
from usnav.register.lc2 import _edge_strength, lc2_refine, lc2_similarity
from usnav.register.pipeline import warp_image

N = 48


def _mri(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(torch.rand(N, N, N, generator=g), 2.0)
    x = (x - x.mean()) / x.std()
    return torch.sigmoid(3 * x)


def test_lc2_is_one_for_an_exact_linear_combination_and_small_for_noise():
    a, b = _mri(0), _mri(1)
    w = torch.ones(N, N, N)
    chans = torch.stack([a, b])
    exact = 2.0 * a - 0.5 * b + 3.0
    assert abs(float(lc2_similarity(exact, chans, w, 7, 3)) - 1.0) < 5e-3  # 1e-4 ridge on the patch covariances
    noise = torch.rand(N, N, N, generator=torch.Generator().manual_seed(5))
    assert float(lc2_similarity(noise, chans, w, 7, 3)) < 0.1
    # patches outside the mask do not count: an exact fit inside, noise outside
    mask = torch.zeros(N, N, N)
    mask[:24] = 1
    mixed = torch.where(mask > 0, exact, noise)
    assert float(lc2_similarity(mixed, chans, mask, 7, 3)) > 0.99


def test_lc2_refine_recovers_a_known_smooth_shift():
    """Fixed = intensity + gradient magnitude of the shifted MRI (specular-echo model); shift 2 mm."""
    n2 = 2 * N
    mri = torch.nn.functional.interpolate(_mri(3)[None, None], size=(n2,) * 3, mode="trilinear")[0, 0]
    x = np.stack(np.meshgrid(*[np.arange(n2, dtype=np.float32)] * 3, indexing="ij"), -1)
    u_true = np.zeros((n2, n2, n2, 3), np.float32)
    u_true[..., 0] = 4.0 * np.sin(2 * np.pi * x[..., 1] / (2 * n2))  # fine voxels (0.5 mm): up to 2 mm
    u_true[..., 2] = 3.0
    moved = torch.from_numpy(warp_image(mri.numpy(), u_true))
    fixed = 0.4 * moved + 3.0 * _edge_strength(moved) + 0.05
    fov = np.zeros((n2,) * 3, bool)
    fov[12:-12, 12:-12, 12:-12] = True
    us = (fixed.numpy() * fov).astype(np.float32)
    pts = np.argwhere(fov)[::997][:60].astype(np.float64)
    tgt = pts + np.array([u_true[tuple(p)] for p in pts.astype(int)])
    sp = (0.5, 0.5, 0.5)
    before = landmark_errors_mm(None, pts, tgt, sp).mean()
    zero = np.zeros((n2, n2, n2, 3), np.float32)
    out, info = lc2_refine(zero, us, fov, [downsample(mri, 2)], ([0, 0, 0], [n2, n2, n2]), iters=80, lr=0.2, lam=0.1, ctrl=4, smooth=2)
    after = landmark_errors_mm(out, pts, tgt, sp).mean()
    assert before > 1.5
    assert after < 0.5 * before, (before, after)
    assert info["lc2_end"] > info["lc2_start"]
    assert out.shape == zero.shape and out.dtype == np.float32
