"""Convolution (COLE-style) B-mode rendering of a scene at a probe pose.

Functional API
--------------
``render_frame(scene, T_world_from_image, probe, params) -> uint8 (H, W)``
    One B-mode frame; ``T_world_from_image`` maps image-mm (see
    :mod:`usnav.sim.probe`) to world mm.  Deterministic: the same pose gives
    the same bytes.
``render_polar(scene, T_world_from_image, probe, params) -> PolarFrame``
    The same in beam coordinates before log compression (envelope, the
    normalised complex speckle signal, gains) for physics checks.
``log_compress(envelope, params) -> float32`` and
``probe.scan_conversion.apply(polar) -> (H, W)`` are the last two steps.

Physics, per frame
------------------
1. **Scatterers**: every point scatterer of the scene's fixed world field
   (:mod:`usnav.sim.scatterers`) within the elevational slab of the beam is
   taken in image coordinates: radius ``rho`` from the apex, beam angle
   ``theta``, elevation ``z``.
2. **Beam-space binning with exact phase**: each scatterer adds
   ``a * echo * b(z; d) * exp(-i 2 k0 rho)`` (complex baseband of a 6 MHz
   echo from its exact radius) to its nearest beam sample; ``b`` is the
   Gaussian elevational pulse-echo profile whose width depends on depth
   ``d``; ``echo`` is the scene's backscatter map sampled in several
   elevational planes (partial-volume effect).
3. **Separable PSF**: convolution with a Gaussian envelope along the beam
   (axial FWHM) and across beams (lateral FWHM that varies with depth);
   the modulus of the complex result is the envelope (Rayleigh speckle).
   The result is normalised so that a unit-echo medium has unit mean
   intensity at every depth.
4. **Specular reflection** at impedance boundaries (reflection coefficient
   ``R = (Z2 - Z1)/(Z2 + Z1)`` along the beam, weighted by the incidence
   angle), **transmission loss** ``prod(1 - R^2)`` and **attenuation**
   ``exp(-2 alpha f d)`` accumulated along each beam: bone (20 dB/cm/MHz,
   R ~ 0.65) casts a shadow.
5. Electronic noise, **time-gain compensation**, **log compression** to a
   dynamic range of 60-83 dB, scan conversion to the Cartesian frame, black
   outside the fan.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter1d

from usnav.sim.probe import Probe
from usnav.sim.scatterers import iter_slab_scatterers
from usnav.sim.scene import Scene

__all__ = [
    "BModeParams",
    "PolarFrame",
    "render_frame",
    "render_frames",
    "iter_frames",
    "render_polar",
    "log_compress",
    "frame_from_polar",
]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_DB_PER_NEPER = 20.0 / math.log(10.0)


@dataclass(frozen=True)
class BModeParams:
    """Imaging settings (scanner knobs), not tissue properties."""

    dynamic_range_db: float = 70.0
    tissue_grey: float = 105.0  # grey level of unit-echo speckle mean envelope after TGC
    tgc_db_cm_mhz: float = 0.6  # attenuation compensated by the time-gain compensation
    specular_gain: float = 40.0  # specular echo amplitude per unit reflection coefficient (re unit speckle rms)
    specular_angle_power: float = 4.0  # cos^p incidence-angle dependence of specular echoes
    noise_db: float = -92.0  # electronic noise rms before TGC, re unit speckle rms
    n_elevation_planes: int = 3  # planes in which the echo map is sampled across the slab
    tissue_dr_factor: int = 4  # coarsening of the beam grid for tissue property maps
    tissue_line_factor: int = 2
    compiled: bool = True  # numba kernel (False: the vectorised numpy reference path)


@dataclass
class PolarFrame:
    """Beam-space rendering products, (n_samples, n_lines) each."""

    envelope: NDArray[np.float32]  # after gains and TGC, before log compression
    speckle: NDArray[np.complex64]  # normalised complex baseband speckle (unit-echo medium: E|s|^2 = 1)
    n_scatterers: int  # lattice cells visited (scatterers generated)
    gain_coarse: NDArray[np.float32]  # transmission * attenuation on the coarse tissue grid
    tgc: NDArray[np.float32]  # (n_samples,) time-gain compensation (amplitude)
    tissue_factors: tuple[int, int]  # coarse grid factors (samples, lines)

    @property
    def gain(self) -> NDArray[np.float32]:
        """(n_samples, n_lines) transmission * attenuation * TGC (amplitude)."""
        shape = self.envelope.shape
        return (_upsample(self.gain_coarse, *self.tissue_factors, shape) * self.tgc[:, None]).astype(np.float32)


def _fan_polygon(probe: Probe, margin_mm: float = 0.0) -> NDArray[np.float64]:
    cx, cy = probe.apex_mm
    th = np.linspace(-probe.half_fov_rad, probe.half_fov_rad, 17)
    pts = []
    for rho in (probe.radius_mm - margin_mm, probe.radius_mm + probe.depth_mm + margin_mm):
        pts.append(np.stack([cx + rho * np.sin(th), cy + rho * np.cos(th)], axis=1))
    return np.concatenate(pts, axis=0)


def _beam_tissue(scene: Scene, T_world_from_image: NDArray[np.float64], probe: Probe, params: BModeParams):
    """Coarse beam-grid property maps: echo in several elevation planes, impedance and attenuation at z=0."""
    from usnav.sim import _kernels

    fdr, fl = params.tissue_dr_factor, params.tissue_line_factor
    key = ("coarse_beam_xy", fdr, fl)
    if key not in probe._cache:
        pts = probe.beam_points_mm(fdr, fl)  # (nr, nl, 3) image mm
        probe._cache[key] = (np.ascontiguousarray(pts[..., 0]), np.ascontiguousarray(pts[..., 1]))
    px, py = probe._cache[key]
    P = params.n_elevation_planes
    hmax = probe.max_half_thickness_mm
    offs = np.linspace(-hmax, hmax, P + 2)[1:-1] if P > 1 else np.zeros(1)
    M = (scene.T_voxel_from_world @ np.asarray(T_world_from_image, dtype=np.float64))[:3]
    echo, imp, att = _kernels.sample_beam_tissue(scene.properties, np.ascontiguousarray(M), px, py, offs, P // 2)
    return offs, echo, imp, att


def _upsample(a: NDArray, fr: int, fl: int, shape: tuple[int, int]) -> NDArray:
    """Nearest upsampling of the last two axes by (fr, fl), padded by edge values to ``shape``."""
    out = np.repeat(np.repeat(a, fr, axis=-2), fl, axis=-1)
    pr = shape[0] - out.shape[-2]
    pl = shape[1] - out.shape[-1]
    if pr or pl:
        pad = [(0, 0)] * (out.ndim - 2) + [(0, pr), (0, pl)]
        out = np.pad(out, pad, mode="edge")
    return out


def _psf_kernels(probe: Probe):
    """Sampled unit-sum Gaussian envelope kernels (cached per probe): lateral per depth row, axial."""
    key = "psf_kernels"
    if key not in probe._cache:
        depth = probe.depth_samples_mm
        sig_l = probe.lateral_fwhm_mm(depth) / _FWHM_PER_SIGMA / (probe.rho_mm * probe.dtheta)  # (ns,) bins
        sig_a = probe.axial_fwhm_mm / _FWHM_PER_SIGMA / probe.dr_mm
        hl = np.ceil(4.0 * sig_l).astype(np.int64)
        kl = np.zeros((sig_l.shape[0], 2 * int(hl.max()) + 1), dtype=np.float32)
        for i, (sg, h) in enumerate(zip(sig_l, hl)):
            x = np.arange(-h, h + 1)
            g = np.exp(-0.5 * (x / sg) ** 2)
            kl[i, : 2 * h + 1] = g / g.sum()
        ha = int(math.ceil(4.0 * sig_a))
        x = np.arange(-ha, ha + 1)
        ka = np.exp(-0.5 * (x / sig_a) ** 2)
        probe._cache[key] = (kl, hl, (ka / ka.sum()).astype(np.float32), ha)
    return probe._cache[key]


def _psf_convolve(bins: NDArray[np.complex64], probe: Probe) -> NDArray[np.complex64]:
    """Separable Gaussian envelope PSF: lateral (depth-dependent width) then axial; unit-sum kernels."""
    from usnav.sim import _kernels

    ns, nl = bins.shape
    kl, hl, ka, ha = _psf_kernels(probe)
    flat = np.ascontiguousarray(bins, dtype=np.complex64).view(np.float32).reshape(ns, 2 * nl)
    return _kernels.psf_convolve(flat, kl, hl, ka, ha).view(np.complex64)


def _bin_scatterers(chunks, probe: Probe, offs: NDArray[np.float64], echo_c: NDArray[np.float32], fdr: int, fl: int):
    """Bin slab scatterers into (n_samples, n_lines) complex baseband bins (exact echo phase).

    Each scatterer's weight is ``amplitude * echo * b(z; depth)`` where the
    echo is looked up in the coarse elevation-plane maps ``echo_c`` (P, nr, nl)
    (partial volume).  Scatterers outside the fan or the elevational support
    get weight 0 (no compaction, for speed).  Returns (bins, n_scatterers).
    """
    ns, nl = probe.n_samples, probe.n_lines
    cx, cy = probe.apex_mm
    sig_e = probe.elevation_sigma_mm(probe.depth_samples_mm)
    inv2s2 = (0.5 / sig_e**2).astype(np.float32)
    zlim2 = ((probe.elevation_truncation_sigma * sig_e) ** 2).astype(np.float32)
    P, nrc, nlc = echo_c.shape
    echo_flat = np.ascontiguousarray(echo_c, dtype=np.float32).reshape(-1)
    step = float(offs[1] - offs[0]) if P > 1 else 1.0
    acc_re = torch.zeros(ns * nl, dtype=torch.float32)
    acc_im = torch.zeros(ns * nl, dtype=torch.float32)
    n = 0
    for slab in chunks:
        n += len(slab)
        dx = slab.x
        dx -= np.float32(cx)
        dy = slab.y
        dy -= np.float32(cy)
        rho = np.sqrt(dx * dx + dy * dy)
        th = np.arctan2(dx, dy)
        th += np.float32(probe.half_fov_rad)
        th *= np.float32(1.0 / probe.dtheta)
        jj = np.floor(th).astype(np.int32)
        fi = rho - np.float32(probe.radius_mm)
        fi *= np.float32(1.0 / probe.dr_mm)
        ii = np.floor(fi).astype(np.int32)
        valid = (ii >= 0) & (ii < ns) & (jj >= 0) & (jj < nl)
        np.clip(ii, 0, ns - 1, out=ii)
        np.clip(jj, 0, nl - 1, out=jj)
        z2 = slab.z * slab.z
        valid &= z2 <= zlim2[ii]
        z2 *= -inv2s2[ii]
        w = np.exp(z2)
        w *= slab.amplitude
        w *= valid
        # echo of the tissue at the scatterer (coarse grid, nearest elevation plane)
        if P > 1:
            pp = np.rint((slab.z - np.float32(offs[0])) * np.float32(1.0 / step)).astype(np.int32)
            np.clip(pp, 0, P - 1, out=pp)
        else:
            pp = np.zeros_like(ii)
        eidx = pp
        eidx *= nrc
        eidx += np.minimum(ii // fdr, nrc - 1)
        eidx *= nlc
        eidx += np.minimum(jj // fl, nlc - 1)
        w *= echo_flat[eidx]
        ph = torch.from_numpy(rho * np.float32(probe.wavenumber_2k))
        wt = torch.from_numpy(w)
        wr = wt * torch.cos(ph)
        wi = wt * torch.sin(ph)
        # linear splatting onto the 2 x 2 nearest beam samples (sample centres at index + 0.5)
        gi = fi - np.float32(0.5)
        gj = th - np.float32(0.5)
        i0 = np.floor(gi)
        j0 = np.floor(gj)
        ti = gi - i0
        tj = gj - j0
        i0 = i0.astype(np.int64)
        j0 = j0.astype(np.int64)
        for di in (0, 1):
            for dj in (0, 1):
                iq = i0 + di
                jq = j0 + dj
                f = (ti if di else 1 - ti) * (tj if dj else 1 - tj)
                f = f * ((iq >= 0) & (iq < ns) & (jq >= 0) & (jq < nl))
                flat = np.clip(iq, 0, ns - 1) * nl + np.clip(jq, 0, nl - 1)
                idx = torch.from_numpy(flat)
                ft = torch.from_numpy(f.astype(np.float32))
                acc_re.index_add_(0, idx, ft * wr)
                acc_im.index_add_(0, idx, ft * wi)
    out = np.empty(ns * nl, dtype=np.complex64)
    out.real = acc_re.numpy()
    out.imag = -acc_im.numpy()
    return out.reshape(ns, nl), n


def _render_slab_compiled(scene: Scene, T_iw, probe: Probe, offs, echo_c, fdr: int, fl: int, parallel: bool = True):
    """Fused numba path: lattice-column enumeration + scatterer binning (see usnav.sim._kernels)."""
    from usnav.sim import _kernels
    from usnav.sim.scatterers import _P1, _P2, _P3, _AMPLITUDE_LUT, column_grid

    ns, nl = probe.n_samples, probe.n_lines
    field = scene.scatterers
    d = field.spacing_mm
    hmax = probe.max_half_thickness_mm
    a, u, v, lo, hi, margin = column_grid(T_iw, _fan_polygon(probe), d, hmax)
    cx, cy = probe.apex_mm
    P, nrc, nlc = echo_c.shape
    step = float(offs[1] - offs[0]) if P > 1 else 1.0
    R = np.ascontiguousarray(T_iw[:3, :3], dtype=np.float64)
    M = R * (d / 256.0)
    off = R @ np.full(3, d * (0.5 / 256.0 - 0.5))
    geom = np.array(
        [cx, cy, probe.radius_mm, 1.0 / probe.dr_mm, probe.half_fov_rad, 1.0 / probe.dtheta, probe.wavenumber_2k,
         probe.elevation_truncation_sigma]
    )
    fan = np.array(
        [cx, cy, probe.radius_mm, probe.radius_mm + probe.depth_mm, probe.half_fov_rad, margin, hmax, probe.depth_mm]
    )
    thick = np.array(column_half_extent(probe, R, d))
    out, n = _kernels.render_slab(
        np.array([lo[u], hi[u]], dtype=np.int64),
        np.array([lo[v], hi[v]], dtype=np.int64),
        np.array([u, v, a], dtype=np.int64),
        np.array([int(_P1), int(_P2), int(_P3)], dtype=np.int64),
        int(field.seed & 0xFFFFFFFF),
        R,
        np.ascontiguousarray(T_iw[:3, 3], dtype=np.float64),
        float(d),
        fan,
        thick,
        np.ascontiguousarray(M),
        off,
        _AMPLITUDE_LUT,
        geom,
        np.ascontiguousarray(echo_c, dtype=np.float32).reshape(-1),
        np.array([P, nrc, nlc, fdr, fl, 0], dtype=np.int64),
        np.array([float(offs[0]), 1.0 / step]),
        ns,
        nl,
        *_polys(probe),
        parallel=parallel,
    )
    return out.view(np.complex64).reshape(ns, nl), int(n)


def _polys(probe: Probe):
    """Polynomial coefficients of exp(-u) over the elevational support and of atan over the fan (cached)."""
    from usnav.sim import _kernels

    key = "kernel_polys"
    if key not in probe._cache:
        t_max = math.tan(min(probe.half_fov_rad + 0.02, 1.45))
        probe._cache[key] = (
            _kernels.exp_poly(0.5 * probe.elevation_truncation_sigma**2 + 1e-3),
            _kernels.atan_poly(t_max),
            t_max,
        )
    return probe._cache[key]


def column_half_extent(probe: Probe, R_image_from_world: NDArray[np.float64], spacing_mm: float):
    """Elevational reach of a lattice column: (c0, c1, c2, scale, add, cap) for ``usnav.sim._kernels``.

    A column crossing the plane at depth ``dep`` only needs the cells whose
    centre lies within ``hz = min(H(dep) * scale + add, cap)`` of the plane,
    ``H(dep) = c0 * sqrt(1 + ((dep - c1) / c2)^2)`` being the truncated
    elevational support.  Bound: a scatterer at elevation ``z`` of that column
    lies ``<= |z| tan(tilt) + delta`` in-plane from the crossing point (tilt of
    the column axis from the plane normal; ``delta`` covers the jitter and the
    depth sampling), ``H`` is Lipschitz with constant ``g = c0 / c2``, so a
    kept scatterer has ``|z| <= (H(dep) + g delta) / (1 - g tan)``; its cell
    centre is at most ``zm = d/2 * sum|n|`` further (jitter along the normal).
    """
    d = float(spacing_mm)
    c0 = probe.elevation_truncation_sigma * probe.elevation_fwhm_focus_mm / _FWHM_PER_SIGMA
    c1 = probe.elevation_focus_mm
    c2 = probe.elevation_rayleigh_mm
    n = np.abs(np.asarray(R_image_from_world)[2, :])
    na = float(n.max())
    tan_tilt = math.sqrt(max(0.0, 1.0 - na * na)) / na
    g = c0 / c2
    delta = 2.0 * d + probe.dr_mm
    scale = 1.0 / (1.0 - g * tan_tilt)
    zm = 0.5 * d * float(n.sum())
    return c0, c1, c2, scale, g * delta * scale + zm, probe.max_half_thickness_mm + zm


def render_polar(
    scene: Scene,
    T_world_from_image: NDArray[np.float64],
    probe: Probe,
    params: BModeParams = BModeParams(),
    *,
    parallel: bool = True,
) -> PolarFrame:
    """Render one frame in beam coordinates (see module docstring).

    ``T_world_from_image``: (4, 4) rigid, image-mm -> world mm.  ``parallel``:
    spread the scatterer kernel over numba's threads (False: stay on the calling
    thread, for rendering several frames concurrently); same bytes either way.
    """
    from usnav.sim import _kernels

    T_wi = np.asarray(T_world_from_image, dtype=np.float64)
    T_iw = np.eye(4)
    T_iw[:3, :3] = T_wi[:3, :3].T
    T_iw[:3, 3] = -T_wi[:3, :3].T @ T_wi[:3, 3]
    ns, nl = probe.n_samples, probe.n_lines
    cx, cy = probe.apex_mm
    R0 = probe.radius_mm
    rho_max = R0 + probe.depth_mm
    half = probe.half_fov_rad

    # --- tissue maps on the coarse beam grid
    offs, echo_c, imp_c, att_c = _beam_tissue(scene, T_wi, probe, params)
    fdr, fl = params.tissue_dr_factor, params.tissue_line_factor

    # --- scatterers of the slab, binned with exact phase
    if params.compiled:
        bins, n_scat = _render_slab_compiled(scene, T_iw, probe, offs, echo_c, fdr, fl, parallel=parallel)
    else:

        def half_thickness(x, y):
            d = np.hypot(x - cx, y - cy) - R0
            return probe.elevation_half_thickness_mm(np.clip(d, 0.0, probe.depth_mm))

        def keep_column(x, y, margin):
            # the compiled kernel's test: crossing within the fan hull dilated by the column drift
            rx, ry = x - cx, y - cy
            r2 = rx * rx + ry * ry
            ch, sh = math.cos(half), math.sin(half)
            inner = (R0 - margin) ** 2 if R0 > margin else -1.0
            return (
                (r2 <= (rho_max + margin) ** 2)
                & (r2 >= inner)
                & (rx * ch - ry * sh <= margin)
                & (-rx * ch - ry * sh <= margin)
            )

        slab_args = (scene.scatterers, T_iw, _fan_polygon(probe), half_thickness, probe.max_half_thickness_mm)
        slab = iter_slab_scatterers(*slab_args, keep_column=keep_column, column_bound=column_half_extent(probe, T_iw[:3, :3], scene.scatterers.spacing_mm)[3:])
        bins, n_scat = _bin_scatterers(slab, probe, offs, echo_c, fdr, fl)

    # --- PSF and normalisation to unit mean intensity for a unit-echo medium
    s = _psf_convolve(bins, probe)
    scale = _speckle_scale(probe, scene.scatterers.density_per_mm3)

    # --- boundaries: specular echoes, transmission loss; attenuation; TGC
    dr_c = probe.dr_mm * fdr
    lnz = np.log(np.maximum(imp_c, 1e-3))
    refl = np.zeros_like(imp_c)
    refl[:-1] = np.tanh(0.5 * (lnz[1:] - lnz[:-1]))  # (Z2 - Z1) / (Z2 + Z1)
    rho_c = R0 + (np.arange(imp_c.shape[0]) + 0.5) * dr_c
    g_r = np.gradient(lnz, axis=0) / dr_c
    g_l = np.gradient(lnz, axis=1) / (rho_c[:, None] * probe.dtheta * fl)
    cos_inc = np.abs(g_r) / np.sqrt(g_r**2 + g_l**2 + 1e-12)
    spec = np.abs(refl) * cos_inc**params.specular_angle_power
    trans = np.cumprod(1.0 - refl**2, axis=0)
    trans = np.concatenate([np.ones_like(trans[:1]), trans[:-1]], axis=0)
    att_np = np.cumsum(att_c, axis=0) * (dr_c / 10.0) * 2.0 * probe.center_freq_mhz / _DB_PER_NEPER
    att_np = np.concatenate([np.zeros_like(att_np[:1]), att_np[:-1]], axis=0)
    gain_c = (trans * np.exp(-att_np)).astype(np.float32)
    sig_a = probe.axial_fwhm_mm / _FWHM_PER_SIGMA
    sig_l = probe.lateral_fwhm_mm(probe.depth_samples_mm) / _FWHM_PER_SIGMA
    spec = gaussian_filter1d(spec, sig_a / dr_c, axis=0, mode="constant")
    spec = gaussian_filter1d(spec, max(0.5, float(np.median(sig_l / (probe.rho_mm * probe.dtheta * fl)))), axis=1)
    spec *= params.specular_gain * (sig_a / dr_c) * math.sqrt(2 * math.pi)  # keep the integrated echo
    tgc = _tgc(probe, params)
    # electronic noise, deterministic per pose and scene: |n1|^2 + |n2|^2 = 2 sigma^2 E, E ~ Exp(1)
    seed = zlib.crc32(np.ascontiguousarray(T_wi).tobytes()) ^ (scene.scatterers.seed * 2654435761 % 2**32)
    rng = np.random.default_rng(seed)
    noise_e = rng.standard_exponential((ns, nl), dtype=np.float32)
    noise_var = 10 ** (params.noise_db / 10.0)  # 2 sigma^2 with sigma^2 = 10^(noise_db/10) / 2
    sf = s.view(np.float32).reshape(ns, 2 * nl)
    env = _kernels.envelope(sf, scale, gain_c, spec.astype(np.float32), fdr, fl, tgc, noise_e, noise_var)
    return PolarFrame(envelope=env, speckle=s, n_scatterers=n_scat, gain_coarse=gain_c, tgc=tgc, tissue_factors=(fdr, fl))


def _speckle_scale(probe: Probe, density_per_mm3: float) -> NDArray[np.float32]:
    """Per-row factor giving unit mean intensity for a unit-echo medium (cached per probe and density)."""
    key = ("speckle_scale", float(density_per_mm3))
    if key not in probe._cache:
        depth = probe.depth_samples_mm
        sig_e = probe.elevation_sigma_mm(depth)
        sig_a = probe.axial_fwhm_mm / _FWHM_PER_SIGMA
        sig_l = probe.lateral_fwhm_mm(depth) / _FWHM_PER_SIGMA
        # unit-sum kernels (in bins); rescale to unit-peak kernels, then
        # E|s|^2 = density * int b^2 * int h_a^2 * int h_l^2 = density * pi^1.5 * sig_e sig_a sig_l
        peak = 2.0 * math.pi * (sig_a / probe.dr_mm) * (sig_l / (probe.rho_mm * probe.dtheta))
        energy = density_per_mm3 * math.pi**1.5 * sig_e * sig_a * sig_l
        # linear splatting onto the beam grid acts as a triangle filter (variance 1/6 bin^2 per axis)
        sa_b = sig_a / probe.dr_mm
        sl_b = sig_l / (probe.rho_mm * probe.dtheta)
        energy = energy * np.sqrt(sa_b**2 / (sa_b**2 + 1.0 / 6.0)) * np.sqrt(sl_b**2 / (sl_b**2 + 1.0 / 6.0))
        probe._cache[key] = (peak / np.sqrt(energy)).astype(np.float32)
    return probe._cache[key]


def _tgc(probe: Probe, params: BModeParams) -> NDArray[np.float32]:
    depth = probe.depth_samples_mm
    return np.exp(2.0 * probe.center_freq_mhz * params.tgc_db_cm_mhz * (depth / 10.0) / _DB_PER_NEPER).astype(
        np.float32
    )


def log_compress(envelope: NDArray[np.floating], params: BModeParams = BModeParams()) -> NDArray[np.float32]:
    """Envelope -> grey levels in [0, 255] (float32): ``dynamic_range_db`` mapped linearly.

    Unit-echo speckle (mean envelope sqrt(pi)/2) maps to ``params.tissue_grey``.
    """
    dr = params.dynamic_range_db
    ref_db = 20.0 * math.log10(math.sqrt(math.pi) / 2.0)
    floor_db = ref_db - params.tissue_grey / 255.0 * dr
    db = 20.0 * np.log10(np.maximum(envelope, 1e-12))
    return np.clip((db - floor_db) * (255.0 / dr), 0.0, 255.0).astype(np.float32)


def frame_from_polar(polar: PolarFrame, probe: Probe, params: BModeParams = BModeParams()) -> NDArray[np.uint8]:
    """Log-compress and scan-convert a :class:`PolarFrame` to a uint8 (H, W) frame."""
    from usnav.sim import _kernels

    dr = params.dynamic_range_db
    ref_db = 20.0 * math.log10(math.sqrt(math.pi) / 2.0)
    floor_db = ref_db - params.tissue_grey / 255.0 * dr
    grey = _kernels.log_compress(np.ascontiguousarray(polar.envelope, dtype=np.float32), floor_db, 255.0 / dr)
    sc = probe.scan_conversion
    key = "inside_flat"
    if key not in probe._cache:
        probe._cache[key] = np.flatnonzero(sc.inside)
    h, w = probe.frame_hw
    return _kernels.scan_convert_u8(grey, probe._cache[key], sc.flat_index, sc.weight, h * w).reshape(h, w)


def render_frame(
    scene: Scene,
    T_world_from_image: NDArray[np.float64],
    probe: Probe,
    params: BModeParams = BModeParams(),
    *,
    parallel: bool = True,
) -> NDArray[np.uint8]:
    """One B-mode frame, uint8 (H, W), black outside the fan, of ``scene`` at pose ``T_world_from_image``.

    ``parallel=False`` keeps all the work on the calling thread (see :func:`render_frames`).
    """
    return frame_from_polar(render_polar(scene, T_world_from_image, probe, params, parallel=parallel), probe, params)


def iter_frames(
    scene: Scene,
    T_world_from_image: NDArray[np.float64],
    probe: Probe,
    params: BModeParams = BModeParams(),
    threads: int | None = None,
) -> Iterator[NDArray[np.uint8]]:
    """Frames (H, W) uint8 at poses (N, 4, 4), in order, rendered concurrently on ``threads`` threads.

    One frame per thread (the compiled stages release the GIL), a few frames
    ahead of the consumer; each frame is computed exactly as by
    :func:`render_frame`, so the bytes do not depend on ``threads``
    (default: numba's thread count).
    """
    import numba

    poses = np.asarray(T_world_from_image, dtype=np.float64)
    n = poses.shape[0]
    threads = numba.get_num_threads() if threads is None else max(1, int(threads))
    if threads <= 1 or n <= 1:
        for i in range(n):
            yield render_frame(scene, poses[i], probe, params, parallel=threads > 1)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    probe.scan_conversion  # build the shared caches before the threads start
    _psf_kernels(probe)
    _polys(probe)
    ahead = 2 * threads
    with ThreadPoolExecutor(max_workers=threads) as ex:
        pending: deque = deque()
        nxt = 0
        while nxt < n or pending:
            while nxt < n and len(pending) < ahead:
                pending.append(ex.submit(render_frame, scene, poses[nxt], probe, params, parallel=False))
                nxt += 1
            yield pending.popleft().result()


def render_frames(
    scene: Scene,
    T_world_from_image: NDArray[np.float64],
    probe: Probe,
    params: BModeParams = BModeParams(),
    threads: int | None = None,
) -> NDArray[np.uint8]:
    """Frames (N, H, W) uint8 at poses (N, 4, 4), rendered concurrently (see :func:`iter_frames`)."""
    poses = np.asarray(T_world_from_image, dtype=np.float64)
    out = np.empty((poses.shape[0],) + tuple(probe.frame_hw), dtype=np.uint8)
    for i, frame in enumerate(iter_frames(scene, poses, probe, params, threads)):
        out[i] = frame
    return out
