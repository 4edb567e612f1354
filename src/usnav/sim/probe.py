"""Curvilinear probe geometry (4DC7-3/40-like) and its beam model.

Frames
------
- **pixel**: TUS-REC pixel grid, ``x`` = column 1..W, ``y`` = row 1..H
  (1-based, the official convention), ``z = 0``.
- **image** (image-mm): ``S @ pixel`` with ``S = diag(sx, sy, 1, 1)``;
  x to the right (lateral), y down (depth), z = x cross y (elevation).
  This is the frame the TUS-REC calibration ``C`` maps to the tool.
- **beam** (polar) grid: sample ``(i, j)`` lies on beam line ``j`` at angle
  ``theta_j`` (radians, 0 = straight down, positive towards +x) and radius
  ``rho_i = radius_mm + (i + 0.5) * dr_mm`` from the virtual apex (the centre
  of curvature of the transducer face), in the image plane.

The apex sits above the frame so that the fan's upper corners touch the top
rows; the transducer face is the arc ``rho = radius_mm``.  Its middle point,
``face_centre_mm``, is the skin contact point used by the motion generator.

Beam model (all FWHM of the two-way, pulse-echo *amplitude* profile, mm):
``fwhm(d) = fwhm_focus * sqrt(1 + ((d - focus) / rayleigh)^2)`` with ``d`` the
depth below the face, separately for the lateral and elevational directions;
the axial envelope FWHM is constant.  For a Gaussian pulse-echo profile of
width ``sigma`` the expected speckle *intensity* correlation after a pure
elevational shift ``s`` is ``exp(-s^2 / (2 sigma^2))``: it crosses 0.5 at
``s = fwhm / 2`` (see :meth:`Probe.expected_elevational_correlation`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

__all__ = ["Probe", "ScanConversion", "SPEED_OF_SOUND_MM_PER_US"]

SPEED_OF_SOUND_MM_PER_US = 1.540
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class Probe:
    """Geometry, sampling and beam model of a curvilinear probe.

    Defaults model the Ultrasonix 4DC7-3/40 settings of TUS-REC: 40 mm radius,
    9 cm depth, 6 MHz, 480 x 640 frames at 0.229 x 0.221 mm/pixel.
    """

    frame_hw: tuple[int, int] = (480, 640)
    spacing_mm: tuple[float, float] = (0.229, 0.221)  # (sx along x/columns, sy along y/rows)
    radius_mm: float = 40.0
    depth_mm: float = 90.0
    fov_deg: float = 64.0
    n_lines: int = 384
    dr_mm: float = 0.1
    center_freq_mhz: float = 6.0
    axial_fwhm_mm: float = 0.40
    lateral_fwhm_focus_mm: float = 0.9
    lateral_focus_mm: float = 40.0
    lateral_rayleigh_mm: float = 40.0
    elevation_fwhm_focus_mm: float = 1.4
    elevation_focus_mm: float = 35.0
    elevation_rayleigh_mm: float = 30.0
    elevation_truncation_sigma: float = 2.0
    top_margin_px: float = 3.0
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    # ------------------------------------------------------------------ factory
    @classmethod
    def for_frame_size(cls, height: int, width: int, **overrides: float) -> Probe:
        """Probe with the default field of view on a ``height x width`` frame.

        Pixel spacing is scaled so the physical field of view (and so the
        physics) is the same as at 480 x 640.
        """
        sx = 0.229 * 640.0 / width
        sy = 0.221 * 480.0 / height
        return cls(frame_hw=(int(height), int(width)), spacing_mm=(sx, sy), **overrides)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Probe:
        """Copy with some fields changed (fresh cache)."""
        return replace(self, _cache={}, **changes)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ geometry
    @property
    def half_fov_rad(self) -> float:
        return math.radians(self.fov_deg) / 2.0

    @property
    def n_samples(self) -> int:
        """Number of depth samples per beam line."""
        return int(round(self.depth_mm / self.dr_mm))

    @property
    def wavelength_mm(self) -> float:
        return SPEED_OF_SOUND_MM_PER_US / self.center_freq_mhz

    @property
    def wavenumber_2k(self) -> float:
        """Two-way wavenumber ``2 k0 = 4 pi / lambda`` (rad/mm): phase of an echo from radius rho is ``2 k0 rho``."""
        return 4.0 * math.pi / self.wavelength_mm

    @property
    def apex_mm(self) -> tuple[float, float]:
        """Virtual apex (centre of curvature) in image-mm (x, y); y is negative (above the frame)."""
        h, w = self.frame_hw
        sx, sy = self.spacing_mm
        cx = (w + 1) / 2.0 * sx
        cy = self.top_margin_px * sy - self.radius_mm * math.cos(self.half_fov_rad)
        return cx, cy

    @property
    def face_centre_mm(self) -> NDArray[np.float64]:
        """Middle of the transducer face in image-mm (x, y, 0): the skin contact point."""
        cx, cy = self.apex_mm
        return np.array([cx, cy + self.radius_mm, 0.0])

    @property
    def T_mm_from_pixel(self) -> NDArray[np.float64]:
        """TUS-REC scaling ``S``: 1-based pixel (x, y, 0, 1) -> image-mm."""
        sx, sy = self.spacing_mm
        return np.diag([sx, sy, 1.0, 1.0])

    def check_fits(self) -> None:
        """Raise ValueError if the fan does not fit in the frame."""
        h, w = self.frame_hw
        sx, sy = self.spacing_mm
        cx, cy = self.apex_mm
        rmax = self.radius_mm + self.depth_mm
        if cx - rmax * math.sin(self.half_fov_rad) < 0 or cy + rmax > (h + 0.5) * sy:
            raise ValueError(
                f"the fan ({self.fov_deg} deg, {self.depth_mm} mm deep) does not fit a {h}x{w} frame "
                f"at {sx:.3f} x {sy:.3f} mm/pixel"
            )

    @property
    def rho_mm(self) -> NDArray[np.float64]:
        """(n_samples,) radius of each depth sample from the apex, mm."""
        return self.radius_mm + (np.arange(self.n_samples) + 0.5) * self.dr_mm

    @property
    def depth_samples_mm(self) -> NDArray[np.float64]:
        """(n_samples,) depth below the transducer face, mm."""
        return (np.arange(self.n_samples) + 0.5) * self.dr_mm

    @property
    def dtheta(self) -> float:
        return 2.0 * self.half_fov_rad / self.n_lines

    @property
    def theta(self) -> NDArray[np.float64]:
        """(n_lines,) beam angles, radians."""
        return -self.half_fov_rad + (np.arange(self.n_lines) + 0.5) * self.dtheta

    def beam_points_mm(self, dr_factor: int = 1, line_factor: int = 1) -> NDArray[np.float64]:
        """In-plane image-mm positions (n_samples/dr_factor, n_lines/line_factor, 3) of a (coarsened) beam grid.

        Coarse sample ``(i, j)`` is the centre of fine samples
        ``i*dr_factor .. (i+1)*dr_factor-1`` (same for lines).
        """
        rho = self.radius_mm + (np.arange(self.n_samples // dr_factor) + 0.5) * self.dr_mm * dr_factor
        th = -self.half_fov_rad + (np.arange(self.n_lines // line_factor) + 0.5) * self.dtheta * line_factor
        cx, cy = self.apex_mm
        x = cx + rho[:, None] * np.sin(th)[None, :]
        y = cy + rho[:, None] * np.cos(th)[None, :]
        return np.stack([x, y, np.zeros_like(x)], axis=-1)

    # ------------------------------------------------------------------ beam model
    def _fwhm(self, depth: NDArray[np.float64] | float, fwhm0: float, focus: float, zr: float):
        d = np.asarray(depth, dtype=np.float64)
        return fwhm0 * np.sqrt(1.0 + ((d - focus) / zr) ** 2)

    def lateral_fwhm_mm(self, depth_mm: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """Lateral FWHM of the pulse-echo amplitude profile at ``depth_mm`` below the face."""
        return self._fwhm(depth_mm, self.lateral_fwhm_focus_mm, self.lateral_focus_mm, self.lateral_rayleigh_mm)

    def elevation_fwhm_mm(self, depth_mm: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """Elevational FWHM (slice thickness) of the pulse-echo amplitude profile at ``depth_mm``."""
        return self._fwhm(
            depth_mm, self.elevation_fwhm_focus_mm, self.elevation_focus_mm, self.elevation_rayleigh_mm
        )

    def elevation_sigma_mm(self, depth_mm: NDArray[np.float64] | float) -> NDArray[np.float64]:
        return self.elevation_fwhm_mm(depth_mm) / _FWHM_PER_SIGMA

    def elevation_half_thickness_mm(self, depth_mm: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """Half width of the slab of scatterers that contribute (Gaussian truncated)."""
        return self.elevation_truncation_sigma * self.elevation_sigma_mm(depth_mm)

    @property
    def max_half_thickness_mm(self) -> float:
        d = np.linspace(0.0, self.depth_mm, 64)
        return float(np.max(self.elevation_half_thickness_mm(d)))

    def expected_elevational_correlation(
        self, shift_mm: NDArray[np.float64] | float, depth_mm: NDArray[np.float64] | float, truncated: bool = True
    ) -> NDArray:
        """Speckle intensity correlation predicted by the beam model for a pure out-of-plane shift.

        Fully developed speckle: intensity correlation = |field correlation|^2,
        and the field correlation is the normalised overlap of the elevational
        profile with its shifted copy.  For the Gaussian ``b(e)`` truncated at
        ``|e| <= c`` (``c = elevation_truncation_sigma * sigma``):
        ``rho_field(s) = exp(-s^2 / (4 sigma^2)) * erf((c - s/2) / sigma) / erf(c / sigma)``
        (0 beyond ``s = 2c``); untruncated, ``rho_I = exp(-s^2 / (2 sigma^2))``.
        """
        from scipy.special import erf

        sig = self.elevation_sigma_mm(depth_mm)
        s = np.abs(np.asarray(shift_mm, dtype=np.float64))
        gauss = np.exp(-(s**2) / (4.0 * sig**2))
        if not truncated:
            return gauss**2
        c = self.elevation_truncation_sigma * sig
        field = gauss * erf(np.maximum(c - s / 2.0, 0.0) / sig) / erf(c / sig)
        return field**2

    # ------------------------------------------------------------------ scan conversion
    @property
    def scan_conversion(self) -> ScanConversion:
        sc = self._cache.get("sc")
        if sc is None:
            sc = ScanConversion.build(self)
            self._cache["sc"] = sc
        return sc

    @property
    def fan_mask(self) -> NDArray[np.bool_]:
        """(H, W) True for pixels inside the fan (the only non-black pixels)."""
        return self.scan_conversion.inside


@dataclass(frozen=True)
class ScanConversion:
    """Bilinear lookup from the beam grid to the Cartesian frame (precomputed per probe)."""

    inside: NDArray[np.bool_]  # (H, W)
    flat_index: NDArray[np.int64]  # (n_inside, 4) indices into the (n_samples * n_lines) beam grid
    weight: NDArray[np.float32]  # (n_inside, 4)

    @classmethod
    def build(cls, probe: Probe) -> ScanConversion:
        h, w = probe.frame_hw
        sx, sy = probe.spacing_mm
        cx, cy = probe.apex_mm
        yy, xx = np.mgrid[1 : h + 1, 1 : w + 1].astype(np.float64)
        x = xx * sx - cx
        y = yy * sy - cy
        rho = np.hypot(x, y)
        th = np.arctan2(x, y)
        fi = (rho - probe.radius_mm) / probe.dr_mm - 0.5
        fj = (th + probe.half_fov_rad) / probe.dtheta - 0.5
        ns, nl = probe.n_samples, probe.n_lines
        inside = (
            (rho >= probe.radius_mm)
            & (rho <= probe.radius_mm + probe.depth_mm)
            & (np.abs(th) <= probe.half_fov_rad)
        )
        fi = np.clip(fi[inside], 0.0, ns - 1.000001)
        fj = np.clip(fj[inside], 0.0, nl - 1.000001)
        i0 = np.floor(fi).astype(np.int64)
        j0 = np.floor(fj).astype(np.int64)
        ai = fi - i0
        aj = fj - j0
        i1 = np.minimum(i0 + 1, ns - 1)
        j1 = np.minimum(j0 + 1, nl - 1)
        idx = np.stack([i0 * nl + j0, i0 * nl + j1, i1 * nl + j0, i1 * nl + j1], axis=1)
        wt = np.stack([(1 - ai) * (1 - aj), (1 - ai) * aj, ai * (1 - aj), ai * aj], axis=1).astype(np.float32)
        return cls(inside=inside, flat_index=idx, weight=wt)

    def apply(self, polar: NDArray[np.floating]) -> NDArray[np.float32]:
        """Scan-convert a (n_samples, n_lines) beam image to (H, W) float32, 0 outside the fan."""
        flat = np.asarray(polar, dtype=np.float32).reshape(-1)
        out = np.zeros(self.inside.shape, dtype=np.float32)
        out[self.inside] = np.einsum("nk,nk->n", flat[self.flat_index], self.weight)
        return out


@functools.lru_cache(maxsize=8)
def default_probe(height: int = 480, width: int = 640) -> Probe:
    """The TUS-REC-like probe for a frame size (cached)."""
    return Probe.for_frame_size(height, width)
