"""PLUS toolkit files: tracked sequences (``.igs.mha``), device-set config XML,
and MetaImage volumes.

Sequence files are MetaImage with ``DimSize = W H N`` (frames stacked along
the third axis), optional zlib compression and per-frame text fields::

    Seq_Frame0007_ProbeToTrackerTransform = 16 numbers (row-major 4x4, mm)
    Seq_Frame0007_ProbeToTrackerTransformStatus = OK | INVALID
    Seq_Frame0007_Timestamp = 215.27
    Seq_Frame0007_ImageStatus = OK | INVALID

Conventions at this boundary (converted here and nowhere else):

- frames are returned as ``(N, H, W)`` arrays in PLUS's internal ``MF``
  orientation (column index grows towards the far side of the marked side,
  row index grows with depth), whatever ``UltrasoundImageOrientation`` the
  file declares (``UF``, ``MN``, ``UN`` are flipped to ``MF``);
- pixel ``(column x, row y)``, 0-based, sits at image coordinates
  ``(x, y, 0)``: the PLUS ``Image`` frame has unit spacing, the pixel size is
  inside the Image->Probe calibration matrix;
- transform ``AToB`` maps points from frame ``A`` to frame ``B``
  (``T_b_from_a``), column vectors, mm.

The config reader returns the ``CoordinateDefinitions`` transforms and the
``VolumeReconstruction`` settings; :func:`frame_transforms` chains
``Image -> Reference`` through static and per-frame transforms the way the
PLUS transform repository does (for the usual set-up:
``inv(ReferenceToTracker) @ ProbeToTracker @ ImageToProbe``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from usnav.errors import InputError, input_error
from usnav.geometry import is_rigid
from usnav.io.atomic import atomic_path

__all__ = [
    "PlusSequence",
    "HoleFillingElementConfig",
    "VolumeReconstructionConfig",
    "PlusConfig",
    "read_sequence",
    "read_config",
    "frame_transforms",
    "read_metaimage",
    "write_metaimage",
    "write_sequence",
]

F64 = NDArray[np.float64]

_MET_TYPES: dict[str, np.dtype] = {
    "MET_UCHAR": np.dtype(np.uint8),
    "MET_CHAR": np.dtype(np.int8),
    "MET_USHORT": np.dtype("<u2"),
    "MET_SHORT": np.dtype("<i2"),
    "MET_UINT": np.dtype("<u4"),
    "MET_INT": np.dtype("<i4"),
    "MET_FLOAT": np.dtype("<f4"),
    "MET_DOUBLE": np.dtype("<f8"),
}
_MET_NAMES = {v: k for k, v in _MET_TYPES.items()}

_FRAME_FIELD = re.compile(r"^Seq_Frame(\d+)_(.+)$")
_TRANSFORM_NAME = re.compile(r"^([A-Za-z0-9]+?)To([A-Za-z0-9]+)Transform$")
_ORIENTATIONS = {"MF": (False, False), "UF": (True, False), "MN": (False, True), "UN": (True, True)}


# --------------------------------------------------------------------------------------
# MetaImage header / data
# --------------------------------------------------------------------------------------


def _split_header(raw: bytes, path: Path) -> tuple[list[tuple[str, str]], int]:
    """Parse ``Key = Value`` lines up to and including ``ElementDataFile``.

    Returns the (key, value) pairs in file order and the byte offset where
    the pixel data starts.
    """
    fields: list[tuple[str, str]] = []
    pos = 0
    n = len(raw)
    while pos < n:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise input_error(path, "MetaImage header has no ElementDataFile line (file truncated or not MetaImage)")
        line = raw[pos:end].decode("latin-1").strip()
        pos = end + 1
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise input_error(path, f"MetaImage header line {line[:60]!r} is not 'Key = Value'")
        key, value = key.strip(), value.strip()
        fields.append((key, value))
        if key == "ElementDataFile":
            return fields, pos
        if len(fields) > 5_000_000:  # pragma: no cover - defensive
            break
    raise input_error(path, "MetaImage header has no ElementDataFile line (file truncated or not MetaImage)")


def _ints(path: Path, key: str, value: str, count: int | None = None) -> list[int]:
    try:
        out = [int(v) for v in value.split()]
    except ValueError:
        raise input_error(path, f"MetaImage field {key} = {value!r} is not a list of integers") from None
    if count is not None and len(out) != count:
        raise input_error(path, f"MetaImage field {key} has {len(out)} values, expected {count}")
    return out


def _floats(path: Path, key: str, value: str, count: int | None = None) -> list[float]:
    try:
        out = [float(v) for v in value.split()]
    except ValueError:
        raise input_error(path, f"MetaImage field {key} = {value!r} is not a list of numbers") from None
    if count is not None and len(out) != count:
        raise input_error(path, f"MetaImage field {key} has {len(out)} values, expected {count}")
    return out


def _read_pixels(path: Path, raw: bytes, start: int, header: dict[str, str], shape_xyz: Sequence[int]) -> np.ndarray:
    """Decode the pixel block into a C-order array of shape reversed(shape_xyz) (+ channels)."""
    etype = header.get("ElementType")
    if etype is None:
        raise input_error(path, "MetaImage header has no ElementType")
    if etype not in _MET_TYPES:
        raise input_error(path, f"MetaImage ElementType {etype} is not supported (use one of {sorted(_MET_TYPES)})")
    dtype = _MET_TYPES[etype]
    if header.get("BinaryDataByteOrderMSB", "False").lower() == "true" or header.get("ElementByteOrderMSB", "False").lower() == "true":
        dtype = dtype.newbyteorder(">")
    channels = int(header.get("ElementNumberOfChannels", "1"))
    count = int(np.prod(shape_xyz)) * channels
    nbytes = count * dtype.itemsize
    datafile = header.get("ElementDataFile", "LOCAL")
    if datafile != "LOCAL":
        data_path = (path.parent / datafile).resolve()
        if not data_path.exists():
            raise input_error(path, f"MetaImage data file {datafile} does not exist")
        raw, start = data_path.read_bytes(), 0
    block = memoryview(raw)[start:]
    if header.get("CompressedData", "False").lower() == "true":
        try:
            block = memoryview(zlib.decompress(block))
        except zlib.error as exc:
            raise input_error(path, f"compressed pixel data is corrupt or truncated ({exc})") from None
    if len(block) < nbytes:
        raise input_error(path, f"pixel data is truncated: {len(block)} bytes, expected {nbytes} for DimSize {list(shape_xyz)}")
    arr = np.frombuffer(block[:nbytes], dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
    shape = tuple(reversed([int(s) for s in shape_xyz]))
    if channels != 1:
        shape = shape + (channels,)
    return arr.reshape(shape)


def read_metaimage(path: str | Path) -> tuple[np.ndarray, dict[str, str]]:
    """Read a MetaImage (``.mha`` with local data, or ``.mhd`` + raw) file.

    Returns ``(array, header)`` with ``array`` in C order, axes reversed from
    ``DimSize`` (a 3D volume ``DimSize = nx ny nz`` gives ``(nz, ny, nx)``),
    and the header fields as strings.
    """
    p = Path(path)
    if not p.exists():
        raise input_error(p, "file does not exist")
    raw = p.read_bytes()
    pairs, start = _split_header(raw, p)
    header = dict(pairs)
    if "DimSize" not in header:
        raise input_error(p, "MetaImage header has no DimSize")
    dims = _ints(p, "DimSize", header["DimSize"])
    if "NDims" in header and int(header["NDims"]) != len(dims):
        raise input_error(p, f"NDims = {header['NDims']} but DimSize has {len(dims)} values")
    return _read_pixels(p, raw, start, header, dims), header


def write_metaimage(
    path: str | Path,
    array_zyx: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray | None = None,
    compress: bool = False,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write a 3D MetaImage volume atomically.

    ``array_zyx``: (nz, ny, nx) array (x fastest in the file, as MetaImage
    stores it); ``spacing``/``origin``: (3,) in x, y, z order, mm;
    ``direction``: (3, 3) columns = world direction of the array axes
    (default identity). Supported dtypes: uint8, int8, (u)int16, (u)int32,
    float32, float64.
    """
    a = np.ascontiguousarray(array_zyx)
    if a.ndim != 3:
        raise ValueError(f"write_metaimage expects a 3D (nz, ny, nx) array, got shape {a.shape}")
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    name = _MET_NAMES.get(np.dtype(dt).newbyteorder("<")) or _MET_NAMES.get(np.dtype(dt))
    if name is None:
        raise ValueError(f"dtype {a.dtype} cannot be written as MetaImage")
    D = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    nz, ny, nx = a.shape
    data = a.astype(np.dtype(dt).newbyteorder("<"), copy=False).tobytes()
    if compress:
        data = zlib.compress(data, 6)

    def fmt(values: Sequence[float]) -> str:
        return " ".join(repr(float(v)) for v in values)

    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        f"CompressedData = {'True' if compress else 'False'}",
    ]
    if compress:
        lines.append(f"CompressedDataSize = {len(data)}")
    lines += [
        f"TransformMatrix = {fmt(D.T.reshape(-1))}",
        f"Offset = {fmt(origin)}",
        "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI",
        f"ElementSpacing = {fmt(spacing)}",
        f"DimSize = {nx} {ny} {nz}",
        f"ElementType = {name}",
    ]
    for k, v in (extra or {}).items():
        lines.append(f"{k} = {v}")
    lines.append("ElementDataFile = LOCAL")
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(lines) + "\n").encode("latin-1"))
            fh.write(data)
    return target


# --------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------


@dataclass
class PlusSequence:
    """A PLUS tracked image sequence.

    ``frames``: (N, H, W) pixels in MF orientation (see module docstring).
    ``transforms``: name ``"AToB"`` -> (N, 4, 4) float64 ``T_b_from_a`` (mm);
    frames where the field is missing hold NaN.
    ``transform_valid``: name -> (N,) bool (status OK and finite).
    ``timestamps``: (N,) seconds (NaN when missing).
    ``image_valid``: (N,) bool from ``ImageStatus`` (missing counts as OK).
    ``orientation``: orientation string declared in the file (e.g. ``"MFA"``).
    ``fields``: any other per-frame fields, name -> list of N strings (or None).
    """

    path: Path
    frames: np.ndarray
    transforms: dict[str, F64]
    transform_valid: dict[str, NDArray[np.bool_]]
    timestamps: F64
    image_valid: NDArray[np.bool_]
    orientation: str
    fields: dict[str, list[str | None]] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) pixels."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def read_sequence(path: str | Path) -> PlusSequence:
    """Read a PLUS sequence metafile (``.igs.mha`` / ``.seq.mha`` / ``.mha``).

    Raises :class:`InputError` for missing files, malformed headers,
    truncated or corrupt pixel data, multi-channel images, unknown image
    orientations and unparsable transforms.
    """
    p = Path(path)
    if not p.exists():
        raise input_error(p, "file does not exist")
    raw = p.read_bytes()
    pairs, start = _split_header(raw, p)
    header: dict[str, str] = {}
    per_frame: dict[str, dict[int, str]] = {}
    for key, value in pairs:
        m = _FRAME_FIELD.match(key)
        if m:
            per_frame.setdefault(m.group(2), {})[int(m.group(1))] = value
        else:
            header[key] = value
    if "DimSize" not in header:
        raise input_error(p, "MetaImage header has no DimSize")
    dims = _ints(p, "DimSize", header["DimSize"])
    if len(dims) == 2:
        dims = dims + [1]
    if len(dims) != 3:
        raise input_error(p, f"a PLUS sequence needs DimSize W H N, got {dims}")
    if int(header.get("ElementNumberOfChannels", "1")) != 1:
        raise input_error(p, "only single-channel (grey-level) sequences are supported")
    W, H, N = dims
    if N < 1 or W < 1 or H < 1:
        raise input_error(p, f"DimSize {dims} describes an empty sequence")
    frames = _read_pixels(p, raw, start, header, dims)  # (N, H, W)

    orientation = header.get("UltrasoundImageOrientation", "MF")
    code = orientation[:2].upper()
    if code not in _ORIENTATIONS:
        raise input_error(p, f"UltrasoundImageOrientation {orientation!r} is not one of MF, UF, MN, UN (+A/D)")
    flip_x, flip_y = _ORIENTATIONS[code]
    if flip_x:
        frames = frames[:, :, ::-1]
    if flip_y:
        frames = frames[:, ::-1, :]
    frames = np.ascontiguousarray(frames)

    bad_index = [i for d in per_frame.values() for i in d if i >= N]
    if bad_index:
        raise input_error(p, f"per-frame field for frame {max(bad_index)} but DimSize has only {N} frames")

    transforms: dict[str, F64] = {}
    valid: dict[str, NDArray[np.bool_]] = {}
    for name, values in per_frame.items():
        if not name.endswith("Transform") or not _TRANSFORM_NAME.match(name):
            continue
        mats = np.full((N, 4, 4), np.nan)
        for i, text in values.items():
            try:
                nums = [float(v) for v in text.split()]
            except ValueError:
                raise input_error(p, f"Seq_Frame{i:04d}_{name} = {text[:60]!r} is not 16 numbers") from None
            if len(nums) != 16:
                raise input_error(p, f"Seq_Frame{i:04d}_{name} has {len(nums)} numbers, expected 16")
            mats[i] = np.asarray(nums).reshape(4, 4)
        status = per_frame.get(name + "Status", {})
        ok = np.array([status.get(i, "OK").strip().upper() == "OK" for i in range(N)])
        ok &= np.isfinite(mats).all(axis=(1, 2))
        key = name[: -len("Transform")]
        transforms[key] = mats
        valid[key] = ok

    ts = np.full(N, np.nan)
    for i, text in per_frame.get("Timestamp", {}).items():
        try:
            ts[i] = float(text)
        except ValueError:
            raise input_error(p, f"Seq_Frame{i:04d}_Timestamp = {text!r} is not a number") from None
    img_status = per_frame.get("ImageStatus", {})
    image_valid = np.array([img_status.get(i, "OK").strip().upper() == "OK" for i in range(N)])

    used = {"Timestamp", "ImageStatus"} | {k + "Transform" for k in transforms} | {k + "TransformStatus" for k in transforms}
    fields = {name: [vals.get(i) for i in range(N)] for name, vals in per_frame.items() if name not in used}
    return PlusSequence(
        path=p,
        frames=frames,
        transforms=transforms,
        transform_valid=valid,
        timestamps=ts,
        image_valid=image_valid,
        orientation=orientation,
        fields=fields,
    )


def write_sequence(
    path: str | Path,
    frames: np.ndarray,
    transforms: dict[str, np.ndarray],
    timestamps: np.ndarray | None = None,
    transform_valid: dict[str, np.ndarray] | None = None,
    image_valid: np.ndarray | None = None,
    compress: bool = True,
    orientation: str = "MF",
) -> Path:
    """Write a PLUS sequence metafile (frames (N, H, W) uint8 in MF
    orientation, transforms name ``"AToB"`` -> (N, 4, 4)). Used for tests and
    simulated sweeps; PLUS and 3D Slicer read the result."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 3:
        raise ValueError("frames must be (N, H, W)")
    N, H, W = frames.shape
    data = frames.tobytes()
    if compress:
        data = zlib.compress(data, 6)
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "AnatomicalOrientation = RAI",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CenterOfRotation = 0 0 0",
        f"CompressedData = {'True' if compress else 'False'}",
    ]
    if compress:
        lines.append(f"CompressedDataSize = {len(data)}")
    lines += [
        f"DimSize = {W} {H} {N}",
        "Kinds = domain domain list",
        "ElementSpacing = 1 1 1",
        "ElementType = MET_UCHAR",
        "Offset = 0 0 0",
        "TransformMatrix = 1 0 0 0 1 0 0 0 1",
        f"UltrasoundImageOrientation = {orientation}",
    ]
    for i in range(N):
        for name, mats in transforms.items():
            m = np.asarray(mats[i], dtype=np.float64).reshape(-1)
            lines.append(f"Seq_Frame{i:04d}_{name}Transform = " + " ".join(f"{v:.10g}" for v in m))
            ok = True if transform_valid is None or name not in transform_valid else bool(transform_valid[name][i])
            lines.append(f"Seq_Frame{i:04d}_{name}TransformStatus = {'OK' if ok else 'INVALID'}")
        t = float(i) if timestamps is None else float(timestamps[i])
        lines.append(f"Seq_Frame{i:04d}_Timestamp = {t:.6f}")
        ok_img = True if image_valid is None else bool(image_valid[i])
        lines.append(f"Seq_Frame{i:04d}_ImageStatus = {'OK' if ok_img else 'INVALID'}")
    lines.append("ElementDataFile = LOCAL")
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(lines) + "\n").encode("latin-1"))
            fh.write(data)
    return target


# --------------------------------------------------------------------------------------
# Config XML
# --------------------------------------------------------------------------------------


@dataclass
class HoleFillingElementConfig:
    """One ``HoleFillingElement`` (PLUS names): ``kind`` is one of GAUSSIAN,
    GAUSSIAN_ACCUMULATION, STICK, NEAREST_NEIGHBOR, DISTANCE_WEIGHT_INVERSE."""

    kind: str
    size: int = 3
    stdev: float = 1.0
    min_ratio: float = 0.0
    stick_length_limit: int = 9
    number_of_sticks: int = 1


@dataclass
class VolumeReconstructionConfig:
    """The ``VolumeReconstruction`` element, in PLUS's units (pixels, mm, degrees)."""

    output_spacing: tuple[float, float, float]
    output_origin: tuple[float, float, float] | None = None
    output_extent: tuple[int, int, int, int, int, int] | None = None
    clip_rectangle_origin: tuple[int, int] = (0, 0)
    clip_rectangle_size: tuple[int, int] = (0, 0)
    fan_angles_deg: tuple[float, float] = (0.0, 0.0)
    fan_origin_pixel: tuple[float, float] = (0.0, 0.0)
    fan_radius_start_pixel: float = 0.0
    fan_radius_stop_pixel: float = 500.0
    interpolation: str = "NEAREST_NEIGHBOR"
    compounding_mode: str = "MEAN"
    fill_holes: bool = False
    hole_filling: list[HoleFillingElementConfig] = field(default_factory=list)
    reference_frame: str = "Reference"
    image_frame: str = "Image"
    skip_interval: int = 1
    pixel_rejection_threshold: float | None = None


@dataclass
class PlusConfig:
    """``coordinate_definitions``: (from, to) -> ``T_to_from_from`` (4, 4)."""

    path: Path
    coordinate_definitions: dict[tuple[str, str], F64]
    reconstruction: VolumeReconstructionConfig | None


def _attr_floats(path: Path, el: ET.Element, name: str, count: int) -> tuple[float, ...] | None:
    text = el.get(name)
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise input_error(path, f"{el.tag} attribute {name}={text!r} is not a list of numbers") from None
    if len(vals) != count:
        raise input_error(path, f"{el.tag} attribute {name} has {len(vals)} values, expected {count}")
    if not all(np.isfinite(vals)):
        raise input_error(path, f"{el.tag} attribute {name} contains NaN or Inf")
    return vals


def _attr_int(path: Path, el: ET.Element, name: str, default: int) -> int:
    text = el.get(name)
    if text is None:
        return default
    try:
        return int(float(text))
    except ValueError:
        raise input_error(path, f"{el.tag} attribute {name}={text!r} is not a number") from None


def _attr_float(path: Path, el: ET.Element, name: str, default: float | None) -> float | None:
    text = el.get(name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise input_error(path, f"{el.tag} attribute {name}={text!r} is not a number") from None


def _enum(path: Path, el: ET.Element, name: str, default: str, allowed: Sequence[str]) -> str:
    text = el.get(name)
    if text is None:
        return default
    value = text.strip().upper()
    if value not in allowed:
        raise input_error(path, f"{el.tag} attribute {name}={text!r} is not one of {', '.join(allowed)}")
    return value


def read_config(path: str | Path) -> PlusConfig:
    """Read a PLUS device-set configuration XML file.

    Raises :class:`InputError` for unreadable XML, malformed matrices, or
    invalid ``VolumeReconstruction`` attributes (missing OutputSpacing,
    unknown Interpolation/CompoundingMode, bad hole-filling elements).
    """
    p = Path(path)
    if not p.exists():
        raise input_error(p, "file does not exist")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise input_error(p, f"is not valid XML ({exc})") from None

    coords: dict[tuple[str, str], F64] = {}
    for cd in root.iter("CoordinateDefinitions"):
        for tr in cd.iter("Transform"):
            src, dst = tr.get("From"), tr.get("To")
            if not src or not dst:
                raise input_error(p, "a CoordinateDefinitions Transform lacks its From or To attribute")
            text = tr.get("Matrix")
            if text is None:
                raise input_error(p, f"transform {src}To{dst} has no Matrix attribute")
            try:
                nums = [float(v) for v in text.split()]
            except ValueError:
                raise input_error(p, f"transform {src}To{dst} Matrix is not 16 numbers") from None
            if len(nums) != 16 or not np.all(np.isfinite(nums)):
                raise input_error(p, f"transform {src}To{dst} Matrix has {len(nums)} finite numbers, expected 16")
            M = np.asarray(nums).reshape(4, 4)
            if np.abs(M[3] - [0, 0, 0, 1]).max() > 1e-6 or abs(np.linalg.det(M[:3, :3])) < 1e-12:
                raise input_error(p, f"transform {src}To{dst} Matrix is not an invertible affine transform")
            coords[(src, dst)] = M

    recon = None
    vr = next(root.iter("VolumeReconstruction"), None)
    if vr is not None:
        spacing = _attr_floats(p, vr, "OutputSpacing", 3)
        if spacing is None:
            raise input_error(p, "VolumeReconstruction has no OutputSpacing attribute")
        if min(spacing) <= 0:
            raise input_error(p, f"VolumeReconstruction OutputSpacing {spacing} must be positive")
        extent = _attr_floats(p, vr, "OutputExtent", 6)
        clip_o = _attr_floats(p, vr, "ClipRectangleOrigin", 2) or (0, 0)
        clip_s = _attr_floats(p, vr, "ClipRectangleSize", 2) or (0, 0)
        angles = _attr_floats(p, vr, "FanAnglesDeg", 2) or _attr_floats(p, vr, "FanAngles", 2) or (0.0, 0.0)
        fan_origin = _attr_floats(p, vr, "FanOriginPixel", 2) or _attr_floats(p, vr, "FanOrigin", 2) or (0.0, 0.0)
        stop = _attr_float(p, vr, "FanRadiusStopPixel", None)
        if stop is None:
            stop = _attr_float(p, vr, "FanDepth", 500.0)
        mode = vr.get("CompoundingMode")
        if mode is None:  # deprecated attributes (PLUS 2014): Calculation / Compounding
            calc = (vr.get("Calculation") or "").upper()
            comp = (vr.get("Compounding") or "ON").upper()
            mode = "MAXIMUM" if calc == "MAXIMUM" else ("LATEST" if comp == "OFF" else "MEAN")
            vr.set("CompoundingMode", mode)
        fill = _enum(p, vr, "FillHoles", "OFF", ("ON", "OFF")) == "ON"
        elements: list[HoleFillingElementConfig] = []
        if fill:
            hf = vr.find("HoleFilling")
            if hf is None:
                raise input_error(p, "FillHoles is ON but VolumeReconstruction has no HoleFilling element")
            for el in hf.findall("HoleFillingElement"):
                kind = _enum(
                    p, el, "Type", "",
                    ("GAUSSIAN", "GAUSSIAN_ACCUMULATION", "STICK", "NEAREST_NEIGHBOR", "DISTANCE_WEIGHT_INVERSE"),
                )
                if not kind:
                    raise input_error(p, "a HoleFillingElement has no Type attribute")
                need = {
                    "GAUSSIAN": ("Stdev", "Size", "MinimumKnownVoxelsRatio"),
                    "GAUSSIAN_ACCUMULATION": ("Stdev", "Size", "MinimumKnownVoxelsRatio"),
                    "DISTANCE_WEIGHT_INVERSE": ("Size", "MinimumKnownVoxelsRatio"),
                    "NEAREST_NEIGHBOR": ("Size", "MinimumKnownVoxelsRatio"),
                    "STICK": ("StickLengthLimit", "NumberOfSticksToUse"),
                }[kind]
                missing = [a for a in need if el.get(a) is None]
                if missing:
                    raise input_error(p, f"HoleFillingElement Type={kind} lacks attribute {missing[0]}")
                elements.append(
                    HoleFillingElementConfig(
                        kind=kind,
                        size=_attr_int(p, el, "Size", 3),
                        stdev=float(_attr_float(p, el, "Stdev", 1.0) or 1.0),
                        min_ratio=float(_attr_float(p, el, "MinimumKnownVoxelsRatio", 0.0) or 0.0),
                        stick_length_limit=_attr_int(p, el, "StickLengthLimit", 9),
                        number_of_sticks=_attr_int(p, el, "NumberOfSticksToUse", 1),
                    )
                )
            if not elements:
                raise input_error(p, "FillHoles is ON but HoleFilling has no HoleFillingElement")
        recon = VolumeReconstructionConfig(
            output_spacing=tuple(spacing),  # type: ignore[arg-type]
            output_origin=_attr_floats(p, vr, "OutputOrigin", 3),  # type: ignore[arg-type]
            output_extent=tuple(int(v) for v in extent) if extent else None,  # type: ignore[arg-type]
            clip_rectangle_origin=(int(clip_o[0]), int(clip_o[1])),
            clip_rectangle_size=(int(clip_s[0]), int(clip_s[1])),
            fan_angles_deg=(float(angles[0]), float(angles[1])),
            fan_origin_pixel=(float(fan_origin[0]), float(fan_origin[1])),
            fan_radius_start_pixel=float(_attr_float(p, vr, "FanRadiusStartPixel", 0.0) or 0.0),
            fan_radius_stop_pixel=float(stop),
            interpolation=_enum(p, vr, "Interpolation", "LINEAR", ("NEAREST_NEIGHBOR", "LINEAR")),
            compounding_mode=_enum(p, vr, "CompoundingMode", "MEAN", ("MEAN", "MAXIMUM", "LATEST", "IMPORTANCE_MASK")),
            fill_holes=fill,
            hole_filling=elements,
            reference_frame=vr.get("ReferenceCoordinateFrame") or "Reference",
            image_frame=vr.get("ImageCoordinateFrame") or "Image",
            skip_interval=max(1, _attr_int(p, vr, "SkipInterval", 1)),
            pixel_rejection_threshold=_attr_float(p, vr, "PixelRejectionThreshold", None),
        )
        if recon.compounding_mode == "IMPORTANCE_MASK":
            raise input_error(p, "CompoundingMode IMPORTANCE_MASK is not supported (use MEAN, MAXIMUM or LATEST)")
    return PlusConfig(path=p, coordinate_definitions=coords, reconstruction=recon)


# --------------------------------------------------------------------------------------
# Transform chaining (PLUS transform repository)
# --------------------------------------------------------------------------------------


def frame_transforms(
    sequence: PlusSequence,
    config: PlusConfig,
    from_frame: str = "Image",
    to_frame: str = "Reference",
) -> tuple[F64, NDArray[np.bool_]]:
    """``T_to_from_from`` for every frame, chaining static config transforms
    and per-frame sequence transforms (either direction, inverted as needed).

    Returns ``(T, valid)``: (N, 4, 4) float64 and (N,) bool, where a frame is
    valid when every per-frame transform on the path has status OK. Raises
    :class:`InputError` when no path exists or a per-frame tracker transform
    on the path is not rigid.
    """
    N = sequence.n_frames
    # edges: node -> list of (neighbour, matrices (N,4,4) mapping node->neighbour, valid (N,), name)
    edges: dict[str, list[tuple[str, F64, NDArray[np.bool_], str]]] = {}

    def add(a: str, b: str, M: F64, ok: NDArray[np.bool_], name: str, dynamic: bool) -> None:
        if dynamic:
            Minv = np.full_like(M, np.nan)
            good = np.isfinite(M).all(axis=(1, 2))
            Minv[good] = np.linalg.inv(M[good])
        else:
            Minv = np.broadcast_to(np.linalg.inv(M[0]), M.shape)
        edges.setdefault(a, []).append((b, M, ok, name))
        edges.setdefault(b, []).append((a, Minv, ok, name))

    static_names = set()
    for (a, b), M in config.coordinate_definitions.items():
        static_names.add(f"{a}To{b}")
        add(a, b, np.broadcast_to(M, (N, 4, 4)), np.ones(N, bool), f"{a}To{b}", False)
    for name, M in sequence.transforms.items():
        m = _TRANSFORM_NAME.match(name + "Transform")
        if m is None or name in static_names:  # config definitions take precedence, as in PLUS
            continue
        add(m.group(1), m.group(2), M, sequence.transform_valid[name], name, True)

    # breadth-first search for the shortest chain
    prev: dict[str, tuple[str, int] | None] = {from_frame: None}
    queue = deque([from_frame])
    while queue:
        node = queue.popleft()
        if node == to_frame:
            break
        for k, (nb, _, _, _) in enumerate(edges.get(node, [])):
            if nb not in prev:
                prev[nb] = (node, k)
                queue.append(nb)
    if to_frame not in prev:
        known = sorted(edges)
        raise InputError(
            f"{sequence.path} + {config.path}: no chain of transforms from {from_frame} to {to_frame} "
            f"(known coordinate frames: {', '.join(known) or 'none'})"
        )
    path_edges = []
    node = to_frame
    while prev[node] is not None:
        parent, k = prev[node]  # type: ignore[misc]
        path_edges.append(edges[parent][k])
        node = parent
    path_edges.reverse()  # from_frame ... to_frame

    T = np.broadcast_to(np.eye(4), (N, 4, 4)).copy()
    valid = sequence.image_valid.copy()
    for nb, M, ok, name in path_edges:
        if name not in static_names:
            good = ok & np.isfinite(M).all(axis=(1, 2))
            rigid = is_rigid(np.where(good[:, None, None], M, np.eye(4)), atol=1e-3)
            if not rigid.all():
                i = int(np.argmin(rigid))
                raise input_error(sequence.path, f"frame {i} transform {name} is not rigid (a tracker transform must be a rotation plus translation)")
            valid &= good
        T = M @ T
    T[~valid] = np.nan
    return T, valid
