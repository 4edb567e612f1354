"""NIfTI volumes with a correct affine (nibabel), written atomically.

usnav volumes carry ``T_world_from_voxel``. NIfTI's world is RAS; ITK,
MetaImage and PLUS use LPS. :func:`write_nifti` takes the world convention of
the matrix it is given (``world="lps"``: flip x and y into RAS, the default
for volumes that must overlay their MetaImage twins in ITK/Slicer;
``world="ras"``: store as is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from usnav.errors import input_error
from usnav.io.atomic import atomic_path

__all__ = ["LPS_TO_RAS", "write_nifti", "read_nifti", "open_nifti", "nifti_array"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    T_world_from_voxel: np.ndarray,
    world: str = "lps",
    intent_name: str | None = None,
) -> Path:
    """Write ``array`` (nx, ny, nz[, ...]) indexed [i, j, k] with the given
    voxel -> world matrix. The file's sform and qform are both set (code 1,
    scanner) so every reader agrees. Returns the path."""
    import nibabel as nib

    T = np.asarray(T_world_from_voxel, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError("T_world_from_voxel must be a finite (4, 4) matrix")
    if world not in ("lps", "ras"):
        raise ValueError("world must be 'lps' or 'ras'")
    affine = LPS_TO_RAS @ T if world == "lps" else T
    data = np.asarray(array)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if intent_name:
        img.header["intent_name"] = intent_name.encode()[:15]
    target = Path(path)
    if not target.name.lower().endswith((".nii", ".nii.gz")):
        raise input_error(target, "a NIfTI output must end in .nii or .nii.gz")
    with atomic_path(target) as tmp:
        nib.save(img, str(tmp))
    return target


def open_nifti(path: str | Path, missing: str = "file not found"):
    """The nibabel image of a NIfTI file, header parsed and no voxel data read;
    InputError ``"<path>: <missing>"`` when the file is absent, or one sentence
    when nibabel cannot parse it."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise input_error(p, missing)
    try:
        return nib.load(str(p))
    except Exception as exc:  # nibabel raises many types
        raise _unreadable(p, exc) from None


def nifti_array(img, path: str | Path, dtype: type | None = None) -> np.ndarray:
    """The voxel data of an image from :func:`open_nifti` (cast to ``dtype``
    unless None); a truncated or corrupt file is one InputError sentence."""
    try:
        return np.asanyarray(img.dataobj) if dtype is None else np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # gzip, EOF and nibabel errors
        raise _unreadable(Path(path), exc) from None


def _unreadable(path: Path, exc: Exception):
    return input_error(path, f"cannot be read as NIfTI ({exc.__class__.__name__}: {exc})")


def read_nifti(path: str | Path, world: str = "lps") -> tuple[np.ndarray, NDArray[np.float64]]:
    """Read a NIfTI file: ``(array [i, j, k], T_world_from_voxel)`` with the
    world in the requested convention."""
    img = open_nifti(path, missing="file does not exist")
    affine = np.asarray(img.affine, dtype=np.float64)
    T = LPS_TO_RAS @ affine if world == "lps" else affine
    return nifti_array(img, path), T
