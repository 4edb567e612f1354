"""TUS-REC data sets: read, validate and write the official layouts.

Layouts (FORMATS.md section 1):

- ``train`` (2024 and 2025 training): ``frames_transfs/<subject>/<scan>.h5``
  with datasets ``frames`` (N, H, W) uint8 and ``tforms`` (N, 4, 4) float.
  2024 scan names look like ``LH_Par_C_DtP``, 2025 ones ``LH_rotation``.
- ``eval`` (2025 validation/test): ``frames/<subject>/<scan>.h5`` (``frames``),
  ``transfs/<subject>/<scan>.h5`` (``tforms``) and ``dataset_keys.h5`` whose
  keys are ``sub<subject>__<scan>``.

Both have ``calib_matrix.csv`` (pixel -> image-mm scaling S, then image-mm ->
tool rigid calibration C) and ``landmarks/landmark_<subject>.h5`` (one (K, 3)
integer dataset per scan: frame index (0-based, >= 1), pixel x, pixel y, both
1-based).

``tforms[n]`` is ``T_tracker_from_tool`` of frame n (mm). Frames are read
lazily: ``Scan.frames[a:b]`` reads only those frames from disk.

Prediction sets mirror the data: ``<pred>/<subject>/<scan>.h5`` with
``global_transforms`` (N-1, 4, 4; frame n -> frame 0, image-mm) and
``local_transforms`` (N-1, 4, 4; frame n -> frame n-1, image-mm).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray

from usnav.errors import input_error
from usnav.geometry.rigid import check_rigid
from usnav.geometry.tracking import global_from_tracking, local_from_tracking
from usnav.io.atomic import atomic_path

__all__ = [
    "CALIB_FILENAME",
    "Calibration",
    "Prediction",
    "Scan",
    "ScanRef",
    "ScanWriter",
    "TusrecDataset",
    "list_predictions",
    "open_dataset",
    "prediction_path",
    "landmark_path",
    "read_calibration",
    "read_landmarks",
    "read_prediction",
    "read_scan_file",
    "validate_landmarks",
    "write_calibration",
    "write_dataset_keys",
    "write_landmarks",
    "write_prediction",
    "write_scan",
]

CALIB_FILENAME = "calib_matrix.csv"
_RIGID_ATOL = 1e-3  # tracker matrices are stored in float32
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Labels of the two blocks of calib_matrix.csv, as the official reader skips
# lines 0 and 5 and reads rows 1-4 and 6-9.
_CALIB_LABELS = ("Image pixel to image mm (scaling S)", "Image mm to tracking tool (calibration C)")


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Probe calibration from ``calib_matrix.csv``.

    T_mm_from_pixel: (4, 4) S, diagonal scaling, pixel (1-based x, y) -> image-mm.
    T_tool_from_mm: (4, 4) C, rigid, image-mm -> tracking tool (mm).
    """

    T_mm_from_pixel: NDArray[np.float64]
    T_tool_from_mm: NDArray[np.float64]

    @property
    def T_tool_from_pixel(self) -> NDArray[np.float64]:
        """C @ S: pixel -> tool."""
        return self.T_tool_from_mm @ self.T_mm_from_pixel

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        """(x, y) pixel spacing in mm (columns, rows)."""
        return float(self.T_mm_from_pixel[0, 0]), float(self.T_mm_from_pixel[1, 1])


def _check_scaling(S: NDArray[np.float64], path: str | Path | None) -> None:
    if not np.isfinite(S).all():
        raise input_error(path, "the scaling matrix S contains NaN or Inf")
    off_diagonal = S[:3, :3] - np.diag(np.diag(S[:3, :3]))
    if np.abs(off_diagonal).max() > 1e-9 or np.abs(S[:3, 3]).max() > 1e-9 or np.abs(S[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise input_error(path, "the scaling matrix S (pixel -> image-mm) must be diagonal with last row 0 0 0 1")
    if S[0, 0] <= 0 or S[1, 1] <= 0:
        raise input_error(path, f"the pixel spacing in S must be positive, got {S[0, 0]:g} x {S[1, 1]:g} mm")


def read_calibration(path: str | Path) -> Calibration:
    """Read ``calib_matrix.csv``: the labelled official format (label line, 4 rows
    of S, label line, 4 rows of C) or the older 8 numeric rows."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise input_error(path, "calibration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise input_error(path, f"cannot read the calibration file ({exc})") from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        cells = [c.strip() for c in line.strip().split(",")]
        if not line.strip() or all(not c for c in cells):
            continue
        try:
            values = [float(c) for c in cells if c != ""]
        except ValueError:
            if any(ch.isdigit() for ch in line) and sum(_is_number(c) for c in cells) >= 2:
                raise input_error(path, f"line {number} mixes numbers and text: {line.strip()!r}") from None
            continue  # a label line
        if len(values) != 4:
            raise input_error(path, f"line {number} has {len(values)} numbers, expected 4")
        rows.append(values)
    if len(rows) != 8:
        raise input_error(path, f"expected two 4x4 matrices (8 numeric rows), found {len(rows)} numeric rows")
    M = np.asarray(rows, dtype=np.float64)
    S, C = M[:4], M[4:]
    _check_scaling(S, path)
    check_rigid(C, name="calibration matrix C (image-mm -> tool)", path=path, atol=_RIGID_ATOL)
    return Calibration(T_mm_from_pixel=S, T_tool_from_mm=C)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def write_calibration(path: str | Path, calib: Calibration) -> None:
    """Write ``calib_matrix.csv`` in the labelled official format (atomic)."""
    lines = [_CALIB_LABELS[0]]
    lines += [",".join(repr(float(v)) for v in row) for row in calib.T_mm_from_pixel]
    lines.append(_CALIB_LABELS[1])
    lines += [",".join(repr(float(v)) for v in row) for row in calib.T_tool_from_mm]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- landmarks


def validate_landmarks(
    landmarks: ArrayLike, n_frames: int, frame_shape: tuple[int, int], path: str | Path | None = None, scan: str = ""
) -> NDArray[np.int64]:
    """Check landmarks (K, 3) = (frame index, x, y): frame in [1, N-1], x in
    [1, W], y in [1, H] (1-based pixels). Returns them as int64."""
    what = f"landmarks of {scan}" if scan else "landmarks"
    arr = np.asarray(landmarks)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise input_error(path, f"{what} must have shape (K, 3), got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise input_error(path, f"{what} contain NaN or Inf")
        if np.any(arr != np.round(arr)):
            raise input_error(path, f"{what} must be integers (frame index, pixel x, pixel y)")
    elif arr.dtype.kind not in "iu":
        raise input_error(path, f"{what} have dtype {arr.dtype}, expected integers")
    arr = arr.astype(np.int64)
    H, W = frame_shape
    frame, x, y = arr[:, 0], arr[:, 1], arr[:, 2]
    bad = np.flatnonzero((frame < 1) | (frame >= n_frames))
    if bad.size:
        i = int(bad[0])
        raise input_error(
            path, f"{what}: row {i} has frame index {frame[i]}, but it must be in 1..{n_frames - 1} (frame 0 has no displacement)"
        )
    bad = np.flatnonzero((x < 1) | (x > W) | (y < 1) | (y > H))
    if bad.size:
        i = int(bad[0])
        raise input_error(path, f"{what}: row {i} has pixel (x={x[i]}, y={y[i]}) outside the 1-based {W}x{H} image")
    return arr


def landmark_path(root: str | Path, subject: str) -> Path:
    """``<root>/landmarks/landmark_<subject>.h5``."""
    return Path(root) / "landmarks" / f"landmark_{subject}.h5"


def read_landmarks(path: str | Path, scan: str) -> NDArray[np.int64] | None:
    """Raw (K, 3) landmarks of ``scan`` from a landmark file, or None if absent."""
    path = Path(path)
    if not path.exists():
        return None
    with _open_h5(path) as f:
        if scan not in f:
            return None
        return np.asarray(f[scan][()])


def write_landmarks(root: str | Path, subject: str, landmarks_by_scan: Mapping[str, ArrayLike]) -> Path:
    """Write/extend ``landmarks/landmark_<subject>.h5`` (atomic). Existing scans in
    the file are kept unless given again."""
    path = landmark_path(root, subject)
    existing: dict[str, NDArray] = {}
    if path.exists():
        with _open_h5(path) as f:
            existing = {k: f[k][()] for k in f.keys()}
    existing.update({k: np.asarray(v, dtype=np.int64) for k, v in landmarks_by_scan.items()})
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        for key in sorted(existing):
            f.create_dataset(key, data=existing[key], track_times=False)
    return path


# --------------------------------------------------------------------------- scans


@dataclass(frozen=True, order=True)
class ScanRef:
    """One scan of a data set: subject folder (e.g. ``"050"``) and scan name (``"LH_rotation"``)."""

    subject: str
    scan: str

    @property
    def key(self) -> str:
        """The ``dataset_keys.h5`` key, ``sub<subject>__<scan>``."""
        return f"sub{self.subject}__{self.scan}"

    @classmethod
    def from_key(cls, key: str, path: str | Path | None = None) -> ScanRef:
        m = re.fullmatch(r"sub(.+?)__(.+)", key)
        if not m:
            raise input_error(path, f"key {key!r} is not of the form sub<subject>__<scan>")
        return cls(_safe_name(m.group(1), path, "subject"), _safe_name(m.group(2), path, "scan"))

    def __str__(self) -> str:
        return f"{self.subject}/{self.scan}"


def _safe_name(name: str, path: str | Path | None, what: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise input_error(path, f"{what} name {name!r} is not a plain file name")
    return name


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise input_error(path, "file not found") from None
    except OSError as exc:
        raise input_error(path, f"is not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    try:
        yield f
    finally:
        f.close()


def _open_h5_keep(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise input_error(path, "file not found") from None
    except OSError as exc:
        raise input_error(path, f"is not a readable HDF5 file (truncated or corrupt?): {exc}") from None


def _frames_dataset(f: h5py.File, path: Path) -> h5py.Dataset:
    if "frames" not in f:
        raise input_error(path, "missing dataset 'frames'")
    frames = f["frames"]
    if not isinstance(frames, h5py.Dataset) or frames.ndim != 3:
        raise input_error(path, f"dataset 'frames' must have shape (N, H, W), got {getattr(frames, 'shape', None)}")
    if frames.dtype != np.uint8:
        raise input_error(path, f"dataset 'frames' has dtype {frames.dtype}, expected uint8")
    if frames.shape[0] < 2:
        raise input_error(path, f"dataset 'frames' has {frames.shape[0]} frame(s); a scan needs at least 2")
    return frames


def _read_tforms(f: h5py.File, path: Path) -> NDArray[np.float64]:
    if "tforms" not in f:
        raise input_error(path, "missing dataset 'tforms'")
    ds = f["tforms"]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 3 or ds.shape[1:] != (4, 4):
        raise input_error(path, f"dataset 'tforms' must have shape (N, 4, 4), got {getattr(ds, 'shape', None)}")
    if ds.dtype.kind != "f":
        raise input_error(path, f"dataset 'tforms' has dtype {ds.dtype}, expected float")
    try:
        tforms = np.asarray(ds[()], dtype=np.float64)
    except OSError as exc:
        raise input_error(path, f"cannot read dataset 'tforms' (truncated file?): {exc}") from None
    if not np.isfinite(tforms).all():
        n = int(np.flatnonzero(~np.isfinite(tforms).all(axis=(1, 2)))[0])
        raise input_error(path, f"dataset 'tforms' has NaN or Inf in frame {n}")
    check_rigid(tforms, name="tforms", path=path, atol=_RIGID_ATOL)
    return tforms


class Scan:
    """One open scan. Frames stay on disk until sliced.

    frames: lazy (N, H, W) uint8 (an h5py dataset: ``scan.frames[a:b]`` reads frames a..b-1).
    tforms: (N, 4, 4) float64 ``T_tracker_from_tool`` per frame, or None when the
        data set has no ground truth for this scan (test frames only).
    landmarks: (K, 3) int64 (frame index, x, y 1-based) or None.
    calibration: the data set's :class:`Calibration`, or None if unknown.
    """

    def __init__(
        self,
        ref: ScanRef,
        frames_path: Path,
        tforms_path: Path | None,
        calibration: Calibration | None = None,
        landmarks_file: Path | None = None,
    ) -> None:
        self.ref = ref
        self.frames_path = frames_path
        self.tforms_path = tforms_path
        self.calibration = calibration
        self._file = _open_h5_keep(frames_path)
        try:
            self.frames = _frames_dataset(self._file, frames_path)
            self.tforms: NDArray[np.float64] | None = None
            if tforms_path is not None:
                if tforms_path == frames_path:
                    self.tforms = _read_tforms(self._file, tforms_path)
                else:
                    with _open_h5(tforms_path) as f:
                        self.tforms = _read_tforms(f, tforms_path)
                if len(self.tforms) != self.n_frames:
                    where = frames_path if tforms_path == frames_path else f"{frames_path} and {tforms_path}"
                    raise input_error(
                        where, f"'frames' has {self.n_frames} frames but 'tforms' has {len(self.tforms)} transforms"
                    )
            self.landmarks: NDArray[np.int64] | None = None
            if landmarks_file is not None:
                raw = read_landmarks(landmarks_file, ref.scan)
                if raw is not None:
                    self.landmarks = validate_landmarks(raw, self.n_frames, self.frame_shape, landmarks_file, ref.scan)
        except BaseException:
            self._file.close()
            raise

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) = (rows, columns)."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def read_frames(self, start: int = 0, stop: int | None = None) -> NDArray[np.uint8]:
        """Frames start..stop-1 as an in-memory (n, H, W) uint8 array."""
        try:
            return np.asarray(self.frames[start:stop])
        except OSError as exc:
            raise input_error(self.frames_path, f"cannot read frames {start}..{stop} (truncated file?): {exc}") from None

    def _require_truth(self) -> tuple[NDArray[np.float64], Calibration]:
        if self.tforms is None:
            raise input_error(self.frames_path, "this scan has no ground-truth 'tforms'")
        if self.calibration is None:
            raise input_error(self.frames_path, f"no {CALIB_FILENAME} is known for this scan")
        return self.tforms, self.calibration

    @property
    def T_image0_from_image(self) -> NDArray[np.float64]:
        """Ground-truth global transforms (N-1, 4, 4): frame n image-mm -> frame 0 image-mm."""
        tforms, calib = self._require_truth()
        return global_from_tracking(tforms, calib.T_tool_from_mm)

    @property
    def T_previous_from_image(self) -> NDArray[np.float64]:
        """Ground-truth local transforms (N-1, 4, 4): frame n image-mm -> frame n-1 image-mm."""
        tforms, calib = self._require_truth()
        return local_from_tracking(tforms, calib.T_tool_from_mm)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Scan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        H, W = self.frame_shape
        truth = "with tforms" if self.tforms is not None else "no tforms"
        marks = f", {len(self.landmarks)} landmarks" if self.landmarks is not None else ""
        return f"Scan({self.ref}, {self.n_frames} frames of {H}x{W}, {truth}{marks})"


def read_scan_file(
    path: str | Path, calib_path: str | Path | None = None, landmarks_path: str | Path | None = None
) -> Scan:
    """Open a single scan file holding ``frames`` (and ``tforms`` if present).

    The subject is taken from the parent folder name and the scan from the file
    name, as in the official layouts.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "file not found")
    calib = read_calibration(calib_path) if calib_path is not None else None
    with _open_h5(path) as f:
        has_tforms = "tforms" in f
    ref = ScanRef(path.parent.name, path.stem)
    return Scan(ref, path, path if has_tforms else None, calib, Path(landmarks_path) if landmarks_path else None)


# --------------------------------------------------------------------------- data sets


@dataclass
class TusrecDataset:
    """A TUS-REC data set folder.

    layout: ``"train"`` (frames_transfs/) or ``"eval"`` (frames/ + transfs/ + dataset_keys.h5).
    scans: every scan, sorted (eval: in ``dataset_keys.h5`` order).
    calibration: from ``calib_matrix.csv`` at the root (None if absent).
    """

    root: Path
    layout: str
    scans: list[ScanRef]
    calibration: Calibration | None = field(repr=False, default=None)

    def frames_path(self, ref: ScanRef) -> Path:
        if self.layout == "train":
            return self.root / "frames_transfs" / ref.subject / f"{ref.scan}.h5"
        return self.root / "frames" / ref.subject / f"{ref.scan}.h5"

    def tforms_path(self, ref: ScanRef) -> Path | None:
        if self.layout == "train":
            return self.frames_path(ref)
        path = self.root / "transfs" / ref.subject / f"{ref.scan}.h5"
        return path if path.exists() else None

    def open_scan(self, ref: ScanRef) -> Scan:
        """Open one scan (lazy frames, ground-truth tforms if present, landmarks)."""
        frames_path = self.frames_path(ref)
        if not frames_path.exists():
            raise input_error(frames_path, f"scan {ref} is listed but its file does not exist")
        lm = landmark_path(self.root, ref.subject)
        return Scan(ref, frames_path, self.tforms_path(ref), self.calibration, lm if lm.exists() else None)

    def __iter__(self) -> Iterator[ScanRef]:
        return iter(self.scans)

    def __len__(self) -> int:
        return len(self.scans)


def _scan_files(folder: Path) -> list[ScanRef]:
    """Every ``<subject>/<scan>.h5`` below ``folder``; hidden names (temporary files
    of writes in progress, ``.<name>.tmp.h5``) are not scans."""
    refs = []
    for subject_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for h5 in sorted(subject_dir.glob("*.h5")):
            if not h5.name.startswith("."):
                refs.append(ScanRef(subject_dir.name, h5.stem))
    return refs


def open_dataset(root: str | Path, require_calibration: bool = True) -> TusrecDataset:
    """Open a data set folder in either layout (detected from its contents)."""
    root = Path(root)
    if not root.is_dir():
        raise input_error(root, "data set folder not found")
    calib_file = root / CALIB_FILENAME
    calibration = read_calibration(calib_file) if calib_file.exists() else None
    if calibration is None and require_calibration:
        raise input_error(calib_file, "calibration file not found in the data set folder")
    if (root / "frames_transfs").is_dir():
        scans = _scan_files(root / "frames_transfs")
        layout = "train"
    elif (root / "frames").is_dir():
        layout = "eval"
        keys_file = root / "dataset_keys.h5"
        if keys_file.exists():
            with _open_h5(keys_file) as f:
                scans = [ScanRef.from_key(k, keys_file) for k in f.keys()]
        else:
            scans = _scan_files(root / "frames")
    else:
        raise input_error(root, "is not a TUS-REC data set (no frames_transfs/ or frames/ folder)")
    if not scans:
        raise input_error(root, "the data set contains no scans")
    return TusrecDataset(root=root, layout=layout, scans=scans, calibration=calibration)


# --------------------------------------------------------------------------- writing


def _scan_paths(root: Path, ref: ScanRef, layout: str) -> tuple[Path, Path]:
    if layout == "train":
        p = root / "frames_transfs" / ref.subject / f"{ref.scan}.h5"
        return p, p
    if layout == "eval":
        return root / "frames" / ref.subject / f"{ref.scan}.h5", root / "transfs" / ref.subject / f"{ref.scan}.h5"
    raise ValueError(f"unknown layout {layout!r}; expected 'train' or 'eval'")


class ScanWriter:
    """Stream a scan to disk in chunks; files appear (atomically) only when
    every frame and transform has been written.

    >>> with ScanWriter(root, "000", "LH_rotation", n_frames=N, frame_shape=(480, 640)) as w:
    ...     w.write(0, frames[:100], tforms[:100])

    tforms: T_tracker_from_tool per frame (mm), stored as float32 like the
    official data (``tforms_dtype`` to change).
    """

    def __init__(
        self,
        root: str | Path,
        subject: str,
        scan: str,
        n_frames: int,
        frame_shape: tuple[int, int],
        layout: str = "train",
        tforms_dtype: type = np.float32,
        chunk_frames: int = 16,
    ) -> None:
        self.ref = ScanRef(_safe_name(subject, None, "subject"), _safe_name(scan, None, "scan"))
        self.root = Path(root)
        self.layout = layout
        self.n_frames = int(n_frames)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.frames_path, self.tforms_path = _scan_paths(self.root, self.ref, layout)
        self._tforms_dtype = tforms_dtype
        self._chunk = max(1, min(chunk_frames, self.n_frames))
        self._written = np.zeros(self.n_frames, dtype=bool)
        self._stack = contextlib.ExitStack()
        self._frames_tmp: Path | None = None
        self._tforms_tmp: Path | None = None

    def __enter__(self) -> ScanWriter:
        self._frames_tmp = self._stack.enter_context(atomic_path(self.frames_path))
        self._ff = self._stack.enter_context(h5py.File(self._frames_tmp, "w"))
        H, W = self.frame_shape
        self._frames = self._ff.create_dataset(
            "frames", shape=(self.n_frames, H, W), dtype=np.uint8, chunks=(self._chunk, H, W), track_times=False
        )
        if self.tforms_path == self.frames_path:
            self._tf = self._ff
        else:
            self._tforms_tmp = self._stack.enter_context(atomic_path(self.tforms_path))
            self._tf = self._stack.enter_context(h5py.File(self._tforms_tmp, "w"))
        self._tforms = self._tf.create_dataset(
            "tforms", shape=(self.n_frames, 4, 4), dtype=self._tforms_dtype, track_times=False
        )
        return self

    def write(self, start: int, frames: ArrayLike, tforms: ArrayLike) -> None:
        """Write frames start..start+n-1: frames (n, H, W) uint8, tforms (n, 4, 4)."""
        frames = np.asarray(frames)
        tforms = np.asarray(tforms, dtype=np.float64)
        n = len(frames)
        if frames.shape[1:] != self.frame_shape or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (n, {self.frame_shape[0]}, {self.frame_shape[1]}) uint8, got {frames.shape} {frames.dtype}")
        if tforms.shape != (n, 4, 4):
            raise ValueError(f"tforms must be ({n}, 4, 4), got {tforms.shape}")
        if start < 0 or start + n > self.n_frames:
            raise ValueError(f"frames {start}..{start + n - 1} are outside 0..{self.n_frames - 1}")
        check_rigid(tforms, name="tforms", atol=_RIGID_ATOL)
        self._frames[start : start + n] = frames
        self._tforms[start : start + n] = tforms.astype(self._tforms_dtype)
        self._written[start : start + n] = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and not self._written.all():
            missing = int(np.flatnonzero(~self._written)[0])
            exc_obj = ValueError(f"{self.frames_path}: frame {missing} was never written")
            self._stack.__exit__(type(exc_obj), exc_obj, None)
            raise exc_obj
        self._stack.__exit__(exc_type, exc, tb)


def write_scan(
    root: str | Path, subject: str, scan: str, frames: ArrayLike, tforms: ArrayLike, layout: str = "train"
) -> None:
    """Write a whole scan (frames (N, H, W) uint8, tforms (N, 4, 4)) in ``layout``."""
    frames = np.asarray(frames)
    with ScanWriter(root, subject, scan, len(frames), frames.shape[1:], layout=layout) as w:
        w.write(0, frames, tforms)


def write_dataset_keys(root: str | Path, refs: Iterable[ScanRef | tuple[str, str]]) -> Path:
    """Write ``dataset_keys.h5`` (eval layout): one entry ``sub<subject>__<scan>``
    per scan, each a small dataset holding ``[subject, scan]``."""
    path = Path(root) / "dataset_keys.h5"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for ref in refs:
            ref = ref if isinstance(ref, ScanRef) else ScanRef(*ref)
            f.create_dataset(ref.key, data=np.array([ref.subject, ref.scan], dtype="S"), track_times=False)
    return path


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class Prediction:
    """Predicted transforms of one scan (image-mm, (N-1, 4, 4) float64 each).

    global_transforms: frame n -> frame 0, n = 1..N-1.
    local_transforms: frame n -> frame n-1, n = 1..N-1.
    """

    global_transforms: NDArray[np.float64]
    local_transforms: NDArray[np.float64]

    @property
    def n_frames(self) -> int:
        return len(self.global_transforms) + 1


def prediction_path(pred_root: str | Path, ref: ScanRef) -> Path:
    """``<pred>/<subject>/<scan>.h5``."""
    return Path(pred_root) / ref.subject / f"{ref.scan}.h5"


def _check_transform_stack(T: NDArray, name: str, path: Path, n_expected: int | None) -> NDArray[np.float64]:
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise input_error(path, f"dataset '{name}' must have shape (N-1, 4, 4), got {T.shape}")
    if n_expected is not None and len(T) != n_expected:
        raise input_error(path, f"dataset '{name}' has {len(T)} transforms, expected {n_expected} (N-1 for a {n_expected + 1}-frame scan)")
    if not np.isfinite(T).all():
        n = int(np.flatnonzero(~np.isfinite(T).all(axis=(1, 2)))[0])
        raise input_error(path, f"dataset '{name}' has NaN or Inf in transform {n}")
    return check_rigid(T, name=name, path=path, atol=_RIGID_ATOL)


def read_prediction(path: str | Path, n_frames: int | None = None) -> Prediction:
    """Read and validate one prediction file; ``n_frames`` is the scan's N if known."""
    path = Path(path)
    with _open_h5(path) as f:
        arrays = {}
        for name in ("global_transforms", "local_transforms"):
            if name not in f:
                raise input_error(path, f"missing dataset '{name}'")
            arrays[name] = np.asarray(f[name][()], dtype=np.float64)
    n_expected = None if n_frames is None else n_frames - 1
    G = _check_transform_stack(arrays["global_transforms"], "global_transforms", path, n_expected)
    L = _check_transform_stack(arrays["local_transforms"], "local_transforms", path, len(G))
    return Prediction(global_transforms=G, local_transforms=L)


def write_prediction(path: str | Path, global_transforms: ArrayLike, local_transforms: ArrayLike) -> Path:
    """Write one prediction file (float64, atomic)."""
    path = Path(path)
    G = np.asarray(global_transforms, dtype=np.float64)
    L = np.asarray(local_transforms, dtype=np.float64)
    if G.shape != L.shape or G.ndim != 3 or G.shape[1:] != (4, 4):
        raise ValueError(f"global and local transforms must both be (N-1, 4, 4), got {G.shape} and {L.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("global_transforms", data=G, track_times=False)
        f.create_dataset("local_transforms", data=L, track_times=False)
    return path


def list_predictions(pred_root: str | Path) -> list[ScanRef]:
    """Every ``<subject>/<scan>.h5`` under a prediction folder."""
    root = Path(pred_root)
    if not root.is_dir():
        raise input_error(root, "prediction folder not found")
    return _scan_files(root)

