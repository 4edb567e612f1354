"""Brain scenes from the MNI152 2009a templates shipped with nilearn, scanned through a craniotomy.

World frame: MNI millimetres (RAS: x to the right, y anterior, z superior).
The templates (T1, grey- and white-matter probability, 1 mm) are loaded
offline from the nilearn wheel.  Per subject seed the brain is warped by a
smooth random deformation (a few mm), gets its own echo texture and
scatterer field, and its own craniotomy on the left (``LH``) or right
(``RH``) hemisphere.

Tissue classes (``BRAIN_LABELS``): saline (coupling fluid in the
craniotomy), dura, skull (bone: shadows outside the window), grey matter,
white matter, ventricular CSF (anechoic), sulcal CSF with pia-arachnoid
(hyperechoic lines), falx (hyperechoic midline).  Grey and white matter keep
their partial-volume mix from the probability maps.

The contact surface is a :class:`~usnav.sim.scene.PlanarSurface` tangent to
the brain surface at the craniotomy centre (normal pointing out of the head,
``extent_mm`` the usable window).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import binary_erosion, distance_transform_edt, gaussian_filter, map_coordinates

from usnav.sim.scatterers import ScattererField
from usnav.sim.scene import TISSUES, PlanarSurface, Scene

__all__ = ["make_brain", "mni_templates", "BRAIN_LABELS"]

BRAIN_LABELS = ("gel", "dura", "bone", "grey_matter", "white_matter", "csf", "pia_sulcus", "falx")
SALIENT = ("pia_sulcus", "csf", "falx", "dura", "bone")


@functools.lru_cache(maxsize=1)
def mni_templates() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float64]]:
    """(T1, GM, WM, T_world_from_voxel) of the MNI152 2009a 1 mm templates (offline, from nilearn)."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    return (
        np.asarray(t1.get_fdata(), dtype=np.float32),
        np.asarray(gm.get_fdata(), dtype=np.float32),
        np.asarray(wm.get_fdata(), dtype=np.float32),
        np.asarray(t1.affine, dtype=np.float64),
    )


def make_brain(
    subject_seed: int,
    side: str = "RH",
    box_mm: float = 120.0,
    voxel_mm: float = 0.75,
    warp_mm: float = 3.0,
    scatterer_spacing_mm: float = 0.2,
) -> Scene:
    """Build the brain scene of one subject with a craniotomy over hemisphere ``side`` (LH/RH)."""
    if side not in ("LH", "RH"):
        raise ValueError(f"side must be LH or RH, got {side!r}")
    t1, gm, wm, A = mni_templates()
    rng = np.random.default_rng([subject_seed, 11, 0 if side == "RH" else 1])
    A_inv = np.linalg.inv(A)
    brain = (gm + wm) > 0.35
    # craniotomy direction (upper, lateral) and its surface point
    sgn = 1.0 if side == "RH" else -1.0
    d = np.array([sgn * rng.uniform(0.35, 0.7), rng.uniform(-0.45, 0.35), 1.0])
    d /= np.linalg.norm(d)
    centre_w = np.array([sgn * 20.0, -15.0, 20.0])
    surf = centre_w.copy()
    for r in np.arange(0.0, 120.0, 0.5):
        p = centre_w + r * d
        v = np.rint(A_inv[:3, :3] @ p + A_inv[:3, 3]).astype(int)
        if np.any(v < 0) or np.any(v >= brain.shape) or not brain[tuple(v)]:
            surf = p
            break
    contact = surf + 2.5 * d  # dura + a thin saline layer
    # output grid: a cube centred below the contact point, axis aligned in MNI space
    centre = contact - d * (box_mm * 0.45)
    n = int(round(box_mm / voxel_mm))
    T = np.eye(4)
    T[0, 0] = T[1, 1] = T[2, 2] = voxel_mm
    T[:3, 3] = centre - voxel_mm * (n - 1) / 2.0
    idx = np.arange(n, dtype=np.float32) * voxel_mm
    X = T[0, 3] + idx[:, None, None]
    Y = T[1, 3] + idx[None, :, None]
    Z = T[2, 3] + idx[None, None, :]
    # smooth random deformation (subject variability), pull-back sampling
    coarse = max(4, n // 8)
    disp = []
    for _ in range(3):
        f = gaussian_filter(rng.standard_normal((coarse, coarse, coarse)), 1.5, mode="wrap")
        f *= warp_mm / (f.std() + 1e-9)
        disp.append(f)
    gi = np.linspace(0, coarse - 1, n)
    GI = np.meshgrid(gi, gi, gi, indexing="ij")
    coords_w = []
    for k, base in enumerate((X, Y, Z)):
        dk = map_coordinates(disp[k], GI, order=1, mode="nearest").astype(np.float32)
        coords_w.append(np.broadcast_to(base, (n, n, n)) + dk)
    del GI
    vox = [A_inv[i, 0] * coords_w[0] + A_inv[i, 1] * coords_w[1] + A_inv[i, 2] * coords_w[2] + A_inv[i, 3] for i in range(3)]
    del coords_w

    def samp(vol):
        return map_coordinates(vol, vox, order=1, mode="constant", cval=0.0).astype(np.float32)

    g = samp(gm)
    w = samp(wm)
    t = samp(t1)
    del vox
    brain_s = (g + w) > 0.35
    # intracranial region: brain dilated (CSF around the brain), then dura and skull shells outside it
    dist_out = distance_transform_edt(~brain_s, sampling=voxel_mm).astype(np.float32)
    dist_in = distance_transform_edt(brain_s, sampling=voxel_mm).astype(np.float32)
    L = {name: i for i, name in enumerate(BRAIN_LABELS)}
    lab = np.zeros((n, n, n), dtype=np.uint8)
    lab[dist_out < 12.0] = L["bone"]
    lab[dist_out < 4.5] = L["dura"]
    lab[dist_out < 3.5] = L["csf"]
    lab[brain_s] = L["grey_matter"]
    lab[brain_s & (w > g)] = L["white_matter"]
    csf_frac = np.clip(1.0 - g - w, 0.0, 1.0)
    # CSF inside the brain: deep = ventricles (anechoic), near the cortex = sulci (pia, hyperechoic)
    inner_csf = (brain_s | (dist_out < 1.5)) & ((csf_frac > 0.45) | ((t < 0.35) & (t > 0)))
    lab[inner_csf & (dist_in > 10.0)] = L["csf"]
    sulcal = (inner_csf | (brain_s & (csf_frac > 0.22))) & (dist_in <= 10.0)
    lab[sulcal] = L["pia_sulcus"]
    # thin the sulcal class to lines: keep its boundary voxels, the core becomes CSF
    core = binary_erosion(sulcal, iterations=1)
    lab[core] = L["csf"]
    # falx: midline sheet above the corpus callosum, between the hemispheres
    falx = (np.abs(np.broadcast_to(X, (n, n, n))) < 0.9) & (np.broadcast_to(Z, (n, n, n)) > 12.0) & (w < 0.5)
    falx &= dist_out < 3.5
    falx |= (np.abs(np.broadcast_to(X, (n, n, n))) < 0.9) & brain_s & (csf_frac > 0.3) & (np.broadcast_to(Z, (n, n, n)) > 15.0)
    lab[falx] = L["falx"]
    # craniotomy: no skull or dura above the window (saline there)
    P = np.stack(np.broadcast_arrays(X, Y, Z), axis=-1)
    rel = P - contact
    along = rel @ d
    radial = np.linalg.norm(rel - along[..., None] * d, axis=-1)
    window = (radial < 26.0) & (along > -14.0)
    lab[window & ((lab == L["bone"]) | (lab == L["dura"]) | (lab == L["csf"]))] = L["gel"]
    lab[window & (along > -1.0)] = L["gel"]
    del P, rel, along, radial, window
    # properties: label table, with the grey/white echo mixed by partial volume and a soft texture
    names = BRAIN_LABELS
    lut = np.array([[TISSUES[k].echo, TISSUES[k].impedance_mrayl, TISSUES[k].attenuation_db_cm_mhz] for k in names], dtype=np.float32)
    props = np.moveaxis(lut[lab], -1, 0).copy()
    parench = (lab == L["grey_matter"]) | (lab == L["white_matter"])
    gw = np.clip(g + w, 1e-3, None)
    mix = (TISSUES["grey_matter"].echo * g + TISSUES["white_matter"].echo * w) / gw
    tex = gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), 2.0 / voxel_mm)
    tex /= tex.std() + 1e-6
    props[0][parench] = (mix * (1.0 + 0.15 * tex))[parench]
    surface = _craniotomy_surface(contact, d)
    seed = int(np.random.default_rng([subject_seed, 0 if side == "RH" else 1, 77]).integers(0, 2**31))
    return Scene(
        props,
        T,
        ScattererField(seed=seed, spacing_mm=scatterer_spacing_mm),
        labels=lab,
        label_names=names,
        surface=surface,
        name=f"brain-{subject_seed}-{side}",
        salient_labels=SALIENT,
    )


def _craniotomy_surface(contact: NDArray[np.float64], normal: NDArray[np.float64]) -> PlanarSurface:
    # "along" axis: anterior direction projected onto the plane; "across" completes a frame with u x v = normal
    ant = np.array([0.0, 1.0, 0.0])
    u = ant - (ant @ normal) * normal
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    return PlanarSurface(origin=contact, u=u, v=v, extent_mm=(36.0, 36.0))
