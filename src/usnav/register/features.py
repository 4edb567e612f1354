"""MIND-SSC features (modality independent neighbourhood descriptor, self-similarity context).

Heinrich et al. (MICCAI 2013): for the 12 pairs of 6-neighbourhood voxels at
distance ``sqrt(2) * dilation`` the patch SSD between the two shifted images
is computed with a box filter, normalised by its mean over the 12 pairs
(a local variance estimate) and mapped through ``exp(-D / V)``. Written from
the paper's definition in plain torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mind_ssc", "gaussian_blur", "downsample", "local_normalise"]

# the 6-neighbourhood and the 12 non-opposite pairs of it (SSC edges)
_SIX = torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 2], [2, 1, 1], [1, 2, 1]])


def _ssc_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    a, b = [], []
    for i in range(6):
        for j in range(i + 1, 6):
            d = ((_SIX[i] - _SIX[j]) ** 2).sum()
            if d == 2:
                a.append(_SIX[i])
                b.append(_SIX[j])
    return torch.stack(a), torch.stack(b)


def _shift(img: torch.Tensor, off: torch.Tensor, dilation: int) -> torch.Tensor:
    """img (1,1,X,Y,Z) replicate-padded by ``dilation``; crop at offset (0..2)*dilation."""
    X, Y, Z = img.shape[2] - 2 * dilation, img.shape[3] - 2 * dilation, img.shape[4] - 2 * dilation
    o = off * dilation
    return img[:, :, o[0] : o[0] + X, o[1] : o[1] + Y, o[2] : o[2] + Z]


def mind_ssc(
    img: torch.Tensor, radius: int = 1, dilation: int = 2, mask: torch.Tensor | None = None, floor: float = 0.0
) -> torch.Tensor:
    """MIND-SSC of a volume.

    Args:
        img: (X, Y, Z) float32 image.
        radius: box-filter radius of the patch SSD (patch side 2r+1 voxels).
        dilation: neighbour distance, voxels.
        mask: optional (X, Y, Z) bool; outside it the features are set to 0.
        floor: added to the local variance estimate, as a fraction of its mean over
            the volume, so that flat (noise-only) regions give flat descriptors
            instead of amplified noise (0 = the paper's normalisation).

    Returns:
        (12, X, Y, Z) float32 features in [0, 1].
    """
    x = img[None, None].float()
    pad = F.pad(x, [dilation] * 6, mode="replicate")
    pa, pb = _ssc_pairs()
    diffs = torch.cat([(_shift(pad, pa[k], dilation) - _shift(pad, pb[k], dilation)) ** 2 for k in range(12)], 1)
    k = 2 * radius + 1
    d = F.avg_pool3d(F.pad(diffs, [radius] * 6, mode="replicate"), k, stride=1)
    v = d.mean(1, keepdim=True)
    vm = v.mean()
    v = v.clamp(min=vm * 1e-3, max=vm * 1e3) + floor * vm
    d = d - d.min(1, keepdim=True)[0]
    mind = torch.exp(-d / v)
    out = mind[0]
    if mask is not None:
        out = out * mask[None].to(out.dtype)
    return out


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (X, Y, Z) or (C, X, Y, Z), sigma in voxels, replicate borders."""
    if sigma <= 0:
        return img
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    h = max(1, int(round(3 * sigma)))
    t = torch.arange(-h, h + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[0]
    y = x[None]
    for ax in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + ax] = len(k)
        w = k.view(shape).repeat(C, 1, 1, 1, 1)
        padv = [0] * 6
        padv[2 * (2 - ax)] = h
        padv[2 * (2 - ax) + 1] = h
        y = F.conv3d(F.pad(y, padv, mode="replicate"), w, groups=C)
    out = y[0]
    return out[0] if squeeze else out


def downsample(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Block-average (X, Y, Z) or (C, X, Y, Z) by an integer factor."""
    if factor == 1:
        return img
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    y = F.avg_pool3d(x[None], factor, stride=factor)[0]
    return y[0] if squeeze else y


def local_normalise(img: torch.Tensor, sigma: float, eps: float = 1e-3) -> torch.Tensor:
    """(img - local mean) / local std with Gaussian windows of ``sigma`` voxels (X, Y, Z).

    The SSD of two locally normalised images is a (windowed) stand-in for
    1 - local NCC: it ignores local gain and offset (shadowing, bias field).
    """
    m = gaussian_blur(img, sigma)
    d = img - m
    v = gaussian_blur(d * d, sigma)
    return d / torch.sqrt(v + eps * float(v.mean()) + 1e-12)
