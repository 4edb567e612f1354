"""Learn2Reg / ReMIND2Reg data set layout: read, write, validate.

Layout (see ``docs`` and FORMATS.md section 2)::

    <root>/ReMIND2Reg_dataset.json
    <root>/imagesTr/ReMIND2Reg_<case:04d>_<mod:04d>.nii.gz    (also imagesVal/, imagesTs/)
    <root>/landmarksTr/ReMIND2Reg_<case:04d>_<mod:04d>.csv    (also landmarksVal/, landmarksTs/)

Modality codes: ``0000`` = 3D iUS (fixed), ``0001`` = ceT1 (moving),
``0002`` = T2 (moving). All volumes of a case share one grid (256^3 at
0.5 mm in the challenge) whose affine is oblique; arrays are kept on their
stored axes and affines are passed through unchanged (never reoriented).

Landmark CSV rows are ``i,j,k`` voxel indices (floats, voxel (0,0,0) is the
centre of the first voxel); row r of the fixed file matches row r of the
moving file.

Displacement fields (``disp_<fc>_<fm>_<mc>_<mm>.nii.gz``) are (X, Y, Z, 3)
float32 in voxel units on the fixed grid, pull direction: the moving image is
sampled at ``x + u(x)`` for every fixed voxel ``x``.

The dataset JSON follows the Learn2Reg template; its exact contents are
unconfirmed for ReMIND2Reg, so it is parsed tolerantly: paired lists are read
from ``training_paired_images``, ``registration_val`` and
``registration_test`` when present, else pairs are derived from the image
files found in the folders.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from usnav.errors import input_error
from usnav.io.atomic import atomic_path
from usnav.io.json_file import read_json
from usnav.io.nifti import nifti_array, open_nifti

__all__ = [
    "DATASET_JSON",
    "MODALITIES",
    "SPLIT_FOLDERS",
    "Volume",
    "Pair",
    "Dataset",
    "image_name",
    "parse_image_name",
    "landmark_path_for",
    "disp_name",
    "read_volume",
    "write_volume",
    "read_landmarks",
    "write_landmarks",
    "read_displacement",
    "write_displacement",
    "open_dataset",
    "write_dataset_json",
    "safe_child",
]

DATASET_JSON = "ReMIND2Reg_dataset.json"
PREFIX = "ReMIND2Reg"
#: modality code -> name
MODALITIES: dict[int, str] = {0: "3D iUS", 1: "ceT1", 2: "T2"}
#: split -> (images folder, landmarks folder)
SPLIT_FOLDERS: dict[str, tuple[str, str]] = {
    "train": ("imagesTr", "landmarksTr"),
    "val": ("imagesVal", "landmarksVal"),
    "test": ("imagesTs", "landmarksTs"),
}
_NAME_RE = re.compile(r"^(?P<prefix>.+?)_(?P<case>\d{4})_(?P<mod>\d{4})\.(nii\.gz|nii|csv)$")
_GRID_ATOL = 1e-4


@dataclass(frozen=True)
class Volume:
    """One image: ``array`` (X, Y, Z) on its stored axes, ``affine`` (4,4) float64 voxel -> world mm."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        """(3,) voxel spacing along the stored array axes, mm (column norms of the affine)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        sp = ", ".join(f"{s:.3g}" for s in self.spacing_mm)
        return f"Volume(shape={self.shape}, spacing_mm=({sp}), dtype={self.array.dtype}, path={self.path})"


def image_name(case: int, mod: int, prefix: str = PREFIX) -> str:
    """``ReMIND2Reg_<case:04d>_<mod:04d>.nii.gz``."""
    return f"{prefix}_{case:04d}_{mod:04d}.nii.gz"


def parse_image_name(path: str | Path) -> tuple[int, int]:
    """(case, modality) from an image or landmark file name; InputError if it does not match."""
    m = _NAME_RE.match(Path(path).name)
    if m is None:
        raise input_error(path, "file name does not match <prefix>_<case 4 digits>_<modality 4 digits>.nii.gz")
    return int(m.group("case")), int(m.group("mod"))


def landmark_path_for(image_path: Path) -> Path:
    """Landmark CSV beside an image: ``imagesXx/<name>.nii.gz`` -> ``landmarksXx/<name>.csv``."""
    folder = image_path.parent.name
    lm_folder = "landmarks" + folder[len("images"):] if folder.startswith("images") else folder
    stem = image_path.name
    for suffix in (".nii.gz", ".nii"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return image_path.parent.parent / lm_folder / f"{stem}.csv"


def disp_name(fixed_case: int, fixed_mod: int, moving_case: int, moving_mod: int) -> str:
    """Official output name ``disp_<fc>_<fm>_<mc>_<mm>.nii.gz`` (4 digits each)."""
    return f"disp_{fixed_case:04d}_{fixed_mod:04d}_{moving_case:04d}_{moving_mod:04d}.nii.gz"


# ----------------------------------------------------------------------------- volumes


def read_volume(path: str | Path, dtype: type | None = np.float32) -> Volume:
    """Read a 3D NIfTI volume without reorienting it.

    Returns a :class:`Volume` with the stored array (X, Y, Z) (cast to
    ``dtype`` unless None) and the sform/qform affine as stored.
    """
    p = Path(path)
    img = open_nifti(p)
    arr = nifti_array(img, p)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise input_error(p, f"expected a 3D volume, got shape {arr.shape}")
    if dtype is not None:
        arr = np.asarray(arr, dtype=dtype)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise input_error(p, "contains NaN or infinite values")
    return Volume(arr, np.asarray(img.affine, dtype=np.float64), p)


def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a volume (any shape, e.g. (X,Y,Z) or (X,Y,Z,3)) with ``affine`` atomically."""
    import nibabel as nib

    p = Path(path)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    with atomic_path(p) as tmp:
        nib.save(img, str(tmp))
    return p


def write_displacement(path: str | Path, disp_vox: np.ndarray, affine: np.ndarray) -> Path:
    """Write a displacement field (X, Y, Z, 3) float32, voxel units, pull direction, fixed-grid affine."""
    disp = np.asarray(disp_vox, dtype=np.float32)
    if disp.ndim != 4 or disp.shape[3] != 3:
        raise ValueError(f"displacement must be (X, Y, Z, 3), got {disp.shape}")
    return write_volume(path, disp, affine)


def read_displacement(path: str | Path, shape: tuple[int, int, int] | None = None) -> Volume:
    """Read a displacement field (X, Y, Z, 3) float32 voxel units; check its shape (and NaNs)."""
    p = Path(path)
    img = open_nifti(p, missing="displacement field not found")
    arr = nifti_array(img, p, dtype=np.float32)
    if arr.ndim == 5 and arr.shape[3] == 1:  # (X,Y,Z,1,3) NIfTI vector convention
        arr = arr[:, :, :, 0, :]
    if arr.ndim != 4 or arr.shape[3] != 3:
        raise input_error(p, f"displacement field must have shape (X, Y, Z, 3), got {arr.shape}")
    if shape is not None and tuple(arr.shape[:3]) != tuple(shape):
        raise input_error(p, f"displacement grid {arr.shape[:3]} differs from the fixed image grid {tuple(shape)}")
    if not np.all(np.isfinite(arr)):
        raise input_error(p, "displacement field contains NaN or infinite values")
    return Volume(arr, np.asarray(img.affine, dtype=np.float64), p)


# ----------------------------------------------------------------------------- landmarks


def read_landmarks(path: str | Path, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Read landmark CSV rows ``i,j,k`` (voxel indices, floats) -> (N, 3) float64.

    Blank lines are skipped; a header row of non-numbers is tolerated. With
    ``shape`` given, every landmark must lie inside the grid
    (-0.5 <= i <= X-0.5 etc.).
    """
    p = Path(path)
    if not p.is_file():
        raise input_error(p, "landmark file not found")
    rows: list[list[float]] = []
    with open(p, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row if c.strip() != ""]
            if not cells:
                continue
            try:
                values = [float(c) for c in cells]
            except ValueError:
                if lineno == 1 and not rows:
                    continue  # header
                raise input_error(p, f"line {lineno} is not numeric: {','.join(cells)!r}") from None
            if len(values) != 3:
                raise input_error(p, f"line {lineno} has {len(values)} values, expected 3 (i,j,k)")
            rows.append(values)
    pts = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(pts)):
        raise input_error(p, "landmarks contain NaN or infinite values")
    if shape is not None and len(pts):
        hi = np.asarray(shape, dtype=np.float64) - 0.5
        bad = np.any((pts < -0.5) | (pts > hi), axis=1)
        if bad.any():
            r = int(np.argmax(bad))
            raise input_error(
                p, f"landmark row {r + 1} {tuple(pts[r].round(3))} lies outside the image grid {tuple(shape)}"
            )
    return pts


def write_landmarks(path: str | Path, points_vox: np.ndarray) -> Path:
    """Write (N, 3) voxel-index landmarks as ``i,j,k`` rows (atomic)."""
    pts = np.asarray(points_vox, dtype=np.float64).reshape(-1, 3)
    p = Path(path)
    with atomic_path(p) as tmp:
        with open(tmp, "w", newline="") as fh:
            for x in pts:
                fh.write(",".join(f"{v:.4f}" for v in x) + "\n")
    return p


# ----------------------------------------------------------------------------- data set


def safe_child(root: Path, rel: str, source: Path) -> Path:
    """Resolve a path from the dataset JSON inside ``root``; InputError if it leaves the folder.

    Absolute paths, ``..`` tricks and symlinks pointing out of the data set
    folder are refused.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise input_error(source, f"entry {rel!r} is not a file path")
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", rel) or Path(rel).is_absolute():
        raise input_error(source, f"path {rel!r} is absolute; paths must stay inside the data set folder")
    cand = root / rel
    root_r = root.resolve()
    try:
        cand.resolve().relative_to(root_r)
    except ValueError:
        raise input_error(source, f"path {rel!r} leaves the data set folder {root}") from None
    return cand


@dataclass(frozen=True)
class Pair:
    """One registration pair: fixed iUS (mod 0) and one moving MRI of the same case."""

    fixed: Path
    moving: Path
    split: str = "train"

    @property
    def fixed_id(self) -> tuple[int, int]:
        return parse_image_name(self.fixed)

    @property
    def moving_id(self) -> tuple[int, int]:
        return parse_image_name(self.moving)

    @property
    def disp_name(self) -> str:
        fc, fm = self.fixed_id
        mc, mm = self.moving_id
        return disp_name(fc, fm, mc, mm)

    @property
    def fixed_landmarks(self) -> Path:
        return landmark_path_for(self.fixed)

    @property
    def moving_landmarks(self) -> Path:
        return landmark_path_for(self.moving)

    @property
    def has_landmarks(self) -> bool:
        return self.fixed_landmarks.is_file() and self.moving_landmarks.is_file()


@dataclass
class Dataset:
    """An opened Learn2Reg data set folder."""

    root: Path
    meta: dict = field(default_factory=dict)
    pairs_by_split: dict[str, list[Pair]] = field(default_factory=dict)

    def pairs(self, which: str = "all") -> list[Pair]:
        """Pairs of ``which`` in {'train', 'val', 'test', 'all'}."""
        if which == "all":
            out: list[Pair] = []
            for s in ("train", "val", "test"):
                out.extend(self.pairs_by_split.get(s, []))
            return out
        if which not in SPLIT_FOLDERS:
            raise ValueError(f"unknown split {which!r}")
        return list(self.pairs_by_split.get(which, []))

    def moving_for(self, fixed: Path) -> list[Path]:
        """All moving images paired with ``fixed`` (ceT1 and/or T2), any split."""
        return [p.moving for p in self.pairs("all") if p.fixed == fixed]

    def check_pair(self, pair: Pair, landmarks: bool = True) -> tuple[Volume, Volume]:
        """Load and validate one pair (files exist, grids equal, landmarks pair up and lie inside)."""
        return check_pair(pair, landmarks=landmarks)


def _grid_mismatch(a: Volume, b: Volume) -> str | None:
    if a.shape != b.shape:
        return f"grid {b.shape} differs from the fixed grid {a.shape}"
    if not np.allclose(a.affine, b.affine, atol=_GRID_ATOL, rtol=0):
        return "affine differs from the fixed image's affine (all modalities of a case must share one grid)"
    return None


def check_pair(pair: Pair, landmarks: bool = True) -> tuple[Volume, Volume]:
    """Read a pair and raise InputError (naming the file) on any inconsistency."""
    for p, what in ((pair.fixed, "fixed iUS"), (pair.moving, "moving MRI")):
        if not p.is_file():
            raise input_error(p, f"missing modality: {what} image not found")
    fixed = read_volume(pair.fixed)
    moving = read_volume(pair.moving)
    problem = _grid_mismatch(fixed, moving)
    if problem:
        raise input_error(pair.moving, problem)
    if landmarks:
        check_landmark_pair(pair.fixed_landmarks, pair.moving_landmarks, fixed.shape)
    return fixed, moving


def check_landmark_pair(
    fixed_csv: Path, moving_csv: Path, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Read both landmark files if present; InputError if only one exists or rows do not pair up."""
    fe, me = fixed_csv.is_file(), moving_csv.is_file()
    if not fe and not me:
        return None
    if fe != me:
        missing = moving_csv if fe else fixed_csv
        raise input_error(missing, "landmark file missing while its partner exists")
    lf = read_landmarks(fixed_csv, shape)
    lm = read_landmarks(moving_csv, shape)
    if len(lf) != len(lm):
        raise input_error(
            moving_csv, f"has {len(lm)} landmark rows but {fixed_csv.name} has {len(lf)}; rows must pair up"
        )
    if len(lf) == 0:
        raise input_error(fixed_csv, "contains no landmarks")
    return lf, lm


def _entry_path(entry: object) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        for key in ("image", "fixed", "path"):
            if isinstance(entry.get(key), str):
                return entry[key]
    return None


def _split_of(path: Path, default: str) -> str:
    for split, (img_folder, _) in SPLIT_FOLDERS.items():
        if path.parent.name == img_folder:
            return split
    return default


def open_dataset(root: str | Path) -> Dataset:
    """Open a Learn2Reg data set folder (with or without its dataset JSON).

    JSON lists used when present: ``training_paired_images`` (train),
    ``registration_val`` (val), ``registration_test`` (test); every path must
    stay inside ``root``. Cases with an iUS but no paired list are paired with
    every moving modality found beside them (split from the folder name).
    """
    root = Path(root)
    if not root.is_dir():
        raise input_error(root, "data set folder not found")
    meta: dict = {}
    jpath = root / DATASET_JSON
    if not jpath.is_file():
        cands = sorted(root.glob("*_dataset.json"))
        jpath = cands[0] if cands else jpath
    pairs: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    seen: set[tuple[Path, Path]] = set()
    if jpath.is_file():
        meta = read_json(jpath)
        if not isinstance(meta, dict):
            raise input_error(jpath, "top level must be a JSON object")
        for key, split in (
            ("training_paired_images", "train"),
            ("registration_val", "val"),
            ("registration_test", "test"),
        ):
            entries = meta.get(key) or []
            if not isinstance(entries, list):
                raise input_error(jpath, f"key {key!r} must be a list of {{fixed, moving}} objects")
            for e in entries:
                if not isinstance(e, dict) or not isinstance(e.get("fixed"), str) or not isinstance(
                    e.get("moving"), str
                ):
                    raise input_error(jpath, f"entry {e!r} in {key!r} needs string 'fixed' and 'moving' paths")
                f = safe_child(root, e["fixed"], jpath)
                m = safe_child(root, e["moving"], jpath)
                parse_image_name(f)
                parse_image_name(m)
                key_fm = (f.resolve(), m.resolve())
                if key_fm in seen:
                    continue
                seen.add(key_fm)
                pairs[split].append(Pair(f, m, split))
        # validate the other listed paths too (they must not leave the folder)
        for key in ("training", "test", "validation"):
            for e in meta.get(key) or [] if isinstance(meta.get(key), list) else []:
                rel = _entry_path(e)
                if rel is not None:
                    safe_child(root, rel, jpath)
    # derive pairs from files for folders without listed pairs
    listed_fixed = {p.fixed.resolve() for ps in pairs.values() for p in ps}
    for split, (img_folder, _) in SPLIT_FOLDERS.items():
        folder = root / img_folder
        if not folder.is_dir():
            continue
        by_case: dict[int, dict[int, Path]] = {}
        for f in sorted(folder.iterdir()):
            m = _NAME_RE.match(f.name)
            if m is None or f.name.endswith(".csv"):
                continue
            try:
                f.resolve().relative_to(root.resolve())
            except ValueError:
                raise input_error(f, f"is a link that leaves the data set folder {root}") from None
            by_case.setdefault(int(m.group("case")), {})[int(m.group("mod"))] = f
        for case, mods in sorted(by_case.items()):
            if 0 not in mods:
                continue
            if mods[0].resolve() in listed_fixed:
                continue
            for mod in sorted(k for k in mods if k != 0):
                pairs[split].append(Pair(mods[0], mods[mod], split))
    return Dataset(root=root, meta=meta, pairs_by_split=pairs)


def write_dataset_json(
    root: str | Path,
    train_pairs: list[tuple[str, str]],
    val_pairs: list[tuple[str, str]] = (),  # type: ignore[assignment]
    test_pairs: list[tuple[str, str]] = (),  # type: ignore[assignment]
    shape: tuple[int, int, int] = (256, 256, 256),
    description: str = "",
) -> Path:
    """Write a Learn2Reg-template ``ReMIND2Reg_dataset.json``; pairs are (fixed, moving) paths relative to root."""
    root = Path(root)

    def rel(p: str) -> str:
        return p if p.startswith("./") else f"./{p}"

    images = sorted({rel(x) for pr in list(train_pairs) + list(val_pairs) for x in pr})
    meta = {
        "name": PREFIX,
        "description": description or "ReMIND2Reg-layout data set written by usnav",
        "tensorImageSize": {"0": "3D", "1": "3D", "2": "3D"},
        "tensorImageShape": {"0": list(shape)},
        "modality": {str(k): v for k, v in MODALITIES.items()},
        "registration_direction": {"fixed": 0, "moving": 1},
        "pairings": "paired",
        "numTraining": len(images),
        "numPairedTraining": len(train_pairs),
        "training": [{"image": x} for x in images],
        "training_paired_images": [{"fixed": rel(f), "moving": rel(m)} for f, m in train_pairs],
        "registration_val": [{"fixed": rel(f), "moving": rel(m)} for f, m in val_pairs],
        "registration_test": [{"fixed": rel(f), "moving": rel(m)} for f, m in test_pairs],
    }
    out = root / DATASET_JSON
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return out
