"""The TUS-REC 2025 submission harness: run ``predict_ddfs.py``, time it, score it.

A submission folder follows the official docker layout: ``predict_ddfs.py``
defines ``predict_ddfs(frames, landmark, data_path_calib, device)`` taking

- frames: (N, H, W) uint8, the whole scan in memory,
- landmark: (K, 3) int64, (frame index 0-based >= 1, pixel x 1-based, pixel y 1-based),
- data_path_calib: path (str) of ``calib_matrix.csv``,
- device: a ``torch.device``,

and returning GP (N-1, 3, H*W), GL (3, K), LP (N-1, 3, H*W), LL (3, K):
displacements in mm, floating point, finite (FORMATS.md section 1).

The submission runs in a child process (:mod:`usnav.harness.sandbox`) with an
address-space limit; every scan has a time limit covering loading its
frames, the call and saving the four arrays (the reported ``time_s`` covers
only the call, as the official ``test.py`` measures it); starting the
process and importing ``predict_ddfs.py`` has its own limit, the larger of
the per-scan limit and 120 s. A scan whose call
times out, crashes the process, raises, or returns arrays of the wrong
shape/dtype or with NaN/Inf is reported with its status and one message, and
the harness carries on with the next scan (a fresh process after a crash or a
timeout). An import error of the submission is reported for every scan.

Scoring never holds the pixel arrays in memory: the child saves them as
``.npy`` files in a temporary folder, the parent reads them back chunk of
frames by chunk (:class:`NpyRows`, plain file reads, so the page cache does
not count as resident memory) and compares each chunk with the true
displacements ``T p - p`` (float64), accumulating in float64.

Every scan is one case of the batch layer (:mod:`usnav.batch`): scans run
on ``--workers`` local processes or on Ray, each worker keeping one
sandboxed submission process across its scans, and a rerun of the same
command skips scans already evaluated with the same submission (sha256 of
its files), ground truth and limits. Per scan the folder gets
``scans/<subject>/<scan>.json`` (its :class:`ScanResult`) and
``logs/<subject>/<scan>.log``; the files below are then written for all
scans, each to a temporary name and renamed:

- ``metrics.h5``: datasets ``GPE``, ``GLE``, ``LPE``, ``LLE`` (mm) and
  ``time_elapsed`` per scan in ``dataset_keys.h5`` order, as the official
  2025 test script writes them (``time_elapsed`` in seconds, as that script's
  ``end - start``; the 2024 docker ``test.py`` divided by 60). Failed scans
  hold NaN. Attributes ``keys`` (scan keys) and ``status`` (per scan) are
  added.
- ``results.json``: per scan the errors, identity errors, normalised scores,
  final score, status, message and seconds; a summary (see
  :func:`summarise_results`).
- ``submission.log``: everything the submission printed.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from usnav import __version__
from usnav.batch.executor import BatchOptions, BatchReport, Case, Resources, run_batch
from usnav.errors import InputError, input_error
from usnav.harness.sandbox import CallResult, Sandbox
from usnav.io.atomic import atomic_path
from usnav.io.tusrec import CALIB_FILENAME, ScanRef, TusrecDataset, open_dataset
from usnav.metrics.tusrec import METRICS, landmark_ddf, mean_landmark_error, mean_pixel_error, normalised_score

__all__ = [
    "STATUSES",
    "NpyRows",
    "OutputError",
    "ScanResult",
    "check_outputs",
    "Evaluation",
    "close_sandboxes",
    "evaluate_submission",
    "run_evaluation",
    "submission_digest",
    "identity_errors",
    "score_outputs",
    "summarise_results",
]

#: every status a scan can end with
STATUSES = ("ok", "invalid", "exception", "timeout", "crash", "import-error")
RESULTS_JSON = "results.json"
METRICS_H5 = "metrics.h5"
LOG_NAME = "submission.log"
_CHUNK_FRAMES = 16
#: minimum seconds allowed for starting the submission process and importing
#: predict_ddfs.py (torch alone takes seconds on a busy machine)
STARTUP_LIMIT_S = 120.0


class OutputError(ValueError):
    """A submission returned arrays that break the official interface (one sentence)."""


@dataclass
class ScanResult:
    """One scan's outcome. Errors in mm (None if not scored), time in seconds."""

    key: str
    subject: str
    scan: str
    status: str
    message: str = ""
    time_s: float | None = None
    GPE: float | None = None
    GLE: float | None = None
    LPE: float | None = None
    LLE: float | None = None
    GPE_identity: float | None = None
    GLE_identity: float | None = None
    LPE_identity: float | None = None
    LLE_identity: float | None = None
    extra: dict = field(default_factory=dict)

    def normalised(self, metric: str) -> float | None:
        """``1 - M / M_identity`` (None when the scan failed or the metric is undefined)."""
        return normalised_score(getattr(self, metric), getattr(self, f"{metric}_identity"))

    @property
    def score(self) -> float | None:
        parts = [s for s in (self.normalised(m) for m in METRICS) if s is not None]
        return float(np.mean(parts)) if parts else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        for m in METRICS:
            out[f"{m}_score"] = self.normalised(m)
        out["score"] = self.score
        return out


# --------------------------------------------------------------------------- checking and scoring


def _check_array(arr, name: str, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(arr.shape) != expected:
        raise OutputError(f"{name} has shape {tuple(arr.shape)}, expected {expected} ({meaning})")
    if arr.dtype.kind != "f":
        raise OutputError(f"{name} has dtype {arr.dtype}, expected a floating-point array (float32) of displacements in mm")


def check_outputs(GP, GL, LP, LL, n_frames: int, frame_shape: tuple[int, int], n_landmarks: int) -> None:
    """Shapes and dtypes of the four arrays; NaN/Inf of the small ones (the pixel
    arrays are checked chunk by chunk while scoring). Raises :class:`OutputError`."""
    H, W = frame_shape
    scan = f"a {n_frames}-frame {H}x{W} scan"
    _check_array(GP, "GP", (n_frames - 1, 3, H * W), f"N-1, 3, H*W for {scan}")
    _check_array(GL, "GL", (3, n_landmarks), f"3, K for {n_landmarks} landmarks")
    _check_array(LP, "LP", (n_frames - 1, 3, H * W), f"N-1, 3, H*W for {scan}")
    _check_array(LL, "LL", (3, n_landmarks), f"3, K for {n_landmarks} landmarks")
    for name, arr in (("GL", GL), ("LL", LL)):
        bad = ~np.isfinite(np.asarray(arr))
        if bad.any():
            k = int(np.flatnonzero(bad.any(axis=0))[0])
            raise OutputError(f"{name} contains NaN or Inf (first at landmark {k})")


class NpyRows:
    """Read-only view of a C-ordered ``.npy`` file whose slices along the first
    axis are read from disk on demand (``rows[a:b]`` -> a new array).

    Unlike a memory map, the pages read never count towards this process's
    resident memory, so scoring a 5.9 GB array costs one chunk of RAM.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            m = np.load(self.path, mmap_mode="r", allow_pickle=False)  # parses the header; touches no data
        except ValueError as exc:
            raise OutputError(f"{self.path.name} cannot be read as a numeric array ({exc})") from None
        if not isinstance(m, np.memmap) or (m.ndim > 1 and not m.flags.c_contiguous):
            raise OutputError(f"{self.path.name} is not a C-ordered numeric array")
        self.shape: tuple[int, ...] = tuple(m.shape)
        self.dtype = m.dtype
        self.offset = int(m.offset)
        del m
        self._row = int(np.prod(self.shape[1:], dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("NpyRows supports contiguous slices only")
        start, stop, _ = index.indices(self.shape[0])
        count = max(0, stop - start)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self._row * self.dtype.itemsize)
            arr = np.fromfile(f, dtype=self.dtype, count=count * self._row)
        if arr.size != count * self._row:
            raise OutputError(f"{self.path.name} is truncated")
        return arr.reshape((count, *self.shape[1:]))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)


def _pixel_error(pred, T_true: np.ndarray, S: np.ndarray, frame_shape: tuple[int, int], name: str,
                 chunk_frames: int) -> float:
    """Mean distance (mm) between a (N-1, 3, P) array (numpy, memory map or
    :class:`NpyRows`) and the true displacements ``T p - p`` of ``T_true``.

    Chunks of frames; the truth is evaluated in float64 with one batched
    matrix product (torch), the prediction is promoted to float64 and every
    distance is summed in float64. A NaN or Inf anywhere is reported with
    the first bad row.
    """
    import torch

    from usnav.metrics.tusrec import pixel_points_mm

    p = torch.from_numpy(pixel_points_mm(S, frame_shape).T.copy())  # (3, P) image-mm
    T = torch.from_numpy(np.asarray(T_true, dtype=np.float64))
    eye = torch.eye(3, dtype=torch.float64)
    total = 0.0
    for start in range(0, len(T), chunk_frames):
        Tc = T[start : start + chunk_frames]
        chunk = np.asarray(pred[start : start + len(Tc)])
        d = torch.from_numpy(np.array(chunk, dtype=np.float64, copy=True))  # (c, 3, P), writable
        # true displacement (R - I) p + t for every pixel of the chunk
        truth = torch.baddbmm(Tc[:, :3, 3:4].expand(-1, -1, p.shape[1]), Tc[:, :3, :3] - eye, p.expand(len(Tc), -1, -1))
        d.sub_(truth).square_()
        part = float(d.sum(dim=1).sqrt_().sum(dtype=torch.float64))
        if not math.isfinite(part):
            bad = ~np.isfinite(chunk).all(axis=(1, 2))
            frame = start + int(np.flatnonzero(bad)[0]) if bad.any() else start
            raise OutputError(f"{name} contains NaN or Inf (first in row {frame}, i.e. frame {frame + 1})")
        total += part
    return total / (len(T) * p.shape[1])


def score_outputs(
    GP, GL, LP, LL,
    true_global: np.ndarray,
    true_local: np.ndarray,
    T_mm_from_pixel: np.ndarray,
    frame_shape: tuple[int, int],
    landmarks: np.ndarray,
    chunk_frames: int = _CHUNK_FRAMES,
) -> dict[str, float | None]:
    """Check the four arrays and return GPE, GLE, LPE, LLE (mm) and the identity errors.

    GP/LP: (N-1, 3, H*W) arrays (numpy or memory-mapped); GL/LL: (3, K).
    true_global/true_local: (N-1, 4, 4) ground-truth transforms (image-mm).
    landmarks: (K, 3) (frame, x, y); K = 0 gives GLE = LLE = None.
    Raises :class:`OutputError` for a wrong shape, dtype, NaN or Inf.
    """
    n_frames = len(true_global) + 1
    K = len(landmarks)
    check_outputs(GP, GL, LP, LL, n_frames, frame_shape, K)
    S = np.asarray(T_mm_from_pixel, dtype=np.float64)
    out: dict[str, float | None] = {}
    out["GPE"] = _pixel_error(GP, true_global, S, frame_shape, "GP", chunk_frames)
    out["LPE"] = _pixel_error(LP, true_local, S, frame_shape, "LP", chunk_frames)
    out["GLE"] = out["LLE"] = None
    if K:
        for name, arr, T in (("GLE", GL, true_global), ("LLE", LL, true_local)):
            diff = np.asarray(arr, dtype=np.float64) - landmark_ddf(T, landmarks, S)
            out[name] = float(np.linalg.norm(diff, axis=0).mean())
    out.update(identity_errors(true_global, true_local, S, frame_shape, landmarks))
    return out


def identity_errors(true_global: np.ndarray, true_local: np.ndarray, T_mm_from_pixel: np.ndarray,
                    frame_shape: tuple[int, int], landmarks: np.ndarray) -> dict[str, float | None]:
    """Errors (mm) of the identity prediction: ``GPE_identity`` ... ``LLE_identity``
    (landmark ones None without landmarks)."""
    S = np.asarray(T_mm_from_pixel, dtype=np.float64)
    eye = np.broadcast_to(np.eye(4), np.shape(true_global))
    out: dict[str, float | None] = {
        "GPE_identity": mean_pixel_error(eye, true_global, S, frame_shape),
        "LPE_identity": mean_pixel_error(eye, true_local, S, frame_shape),
        "GLE_identity": None,
        "LLE_identity": None,
    }
    if len(landmarks):
        out["GLE_identity"] = mean_landmark_error(eye, true_global, landmarks, S)
        out["LLE_identity"] = mean_landmark_error(eye, true_local, landmarks, S)
    return out


# --------------------------------------------------------------------------- the harness


def _check_submission(submission: Path) -> Path:
    if not submission.is_dir():
        raise input_error(submission, "submission folder not found")
    entry = submission / "predict_ddfs.py"
    if not entry.is_file():
        raise input_error(submission, "is not a TUS-REC submission: it has no predict_ddfs.py")
    return entry


@dataclass
class _Truth:
    """What the harness knows about one scan before any submission code runs."""

    ref: ScanRef
    n_frames: int
    frame_shape: tuple[int, int]
    landmarks: np.ndarray  # (K, 3), K may be 0
    true_global: np.ndarray  # (N-1, 4, 4)
    true_local: np.ndarray  # (N-1, 4, 4)


def _read_ground_truth(ds: TusrecDataset) -> list[_Truth]:
    """Open every scan once, before running anything, and keep its ground truth
    in memory: bad data is the organiser's input error (exit code 2), and a
    submission that rewrites files in DATA cannot change how it is scored."""
    truths = []
    for ref in ds.scans:
        with ds.open_scan(ref) as scan:
            if scan.tforms is None:
                raise input_error(ds.frames_path(ref), f"scan {ref} has no ground-truth transforms (transfs/{ref.subject}/{ref.scan}.h5)")
            landmarks = scan.landmarks if scan.landmarks is not None else np.zeros((0, 3), dtype=np.int64)
            truths.append(_Truth(ref, scan.n_frames, scan.frame_shape, landmarks, scan.T_image0_from_image,
                                 scan.T_previous_from_image))
    return truths


def default_memory_limit_gb() -> float:
    """75% of the machine's physical memory, in GB."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover
        return 16.0
    return 0.75 * pages / 1e9


def submission_digest(submission: Path) -> str:
    """sha256 over the relative paths and contents of every file in the submission
    folder: a finished scan is re-evaluated when the submission changes."""
    h = hashlib.sha256()
    for p in sorted(q for q in submission.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
        h.update(p.relative_to(submission).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class Evaluation:
    """What :func:`run_evaluation` returns: the JSON summary and the batch report
    (``report.exit_code`` is 3 when the harness itself failed on some scan)."""

    summary: dict
    report: BatchReport


def evaluate_submission(submission: str | Path, data: str | Path, out: str | Path, **options) -> dict:
    """Run a submission on every scan of ``data`` and write ``out`` (see module
    doc); the options are those of :func:`run_evaluation`. Returns the JSON summary."""
    return run_evaluation(submission, data, out, **options).summary


def run_evaluation(
    submission: str | Path,
    data: str | Path,
    out: str | Path,
    device: str = "cpu",
    time_limit_s: float = 3600.0,
    memory_limit_gb: float | None = None,
    team: str | None = None,
    work_dir: str | Path | None = None,
    batch: BatchOptions | None = None,
) -> Evaluation:
    """Run a submission on every scan of ``data`` through the batch layer and write ``out``.

    One batch case per scan (:mod:`usnav.batch`: ``batch.workers`` local
    processes or Ray, resumable): a rerun skips scans already evaluated with
    the same submission (content hash), truth and limits. Each worker keeps
    one sandboxed submission process across its scans. The folder gets
    ``scans/<subject>/<scan>.json`` and ``logs/<subject>/<scan>.log`` per scan,
    then ``metrics.h5``, ``results.json`` and ``submission.log`` for all scans
    (each written to a temporary name and renamed).

    Raises InputError only for the organiser's inputs (missing submission
    entry point, bad data set, bad limits, a results folder of another batch).
    """
    submission = Path(submission).resolve()
    _check_submission(submission)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device must be cpu or cuda, got {device!r}")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device} was requested but this machine has no CUDA device")
    if not (time_limit_s > 0):
        raise InputError(f"--time-limit must be positive, got {time_limit_s:g} s")
    if memory_limit_gb is None:
        memory_limit_gb = default_memory_limit_gb()
    if not (memory_limit_gb > 0):
        raise InputError(f"--memory-limit-gb must be positive, got {memory_limit_gb:g}")
    if work_dir is not None and not Path(work_dir).is_dir():
        raise input_error(work_dir, "work folder not found")
    ds = open_dataset(data)
    assert ds.calibration is not None
    truths = _read_ground_truth(ds)  # before any submission code runs (see _read_ground_truth)
    out = Path(out)
    calib_path = str((ds.root / CALIB_FILENAME).resolve())
    S = ds.calibration.T_mm_from_pixel
    digest = submission_digest(submission)
    batch = batch or BatchOptions()
    batch = dataclasses.replace(batch, resources=Resources.for_device(device, cpus=batch.resources.cpus),
                                description=batch.description if batch.description != "cases" else "evaluating")

    # what decides a scan's result; the work folder does not
    settings = {"submission": str(submission), "submission_sha256": digest, "device": device,
                "time_limit_s": float(time_limit_s), "memory_limit_gb": float(memory_limit_gb)}
    cases = []
    for truth in truths:
        ref = truth.ref
        frames_path = str(ds.frames_path(ref).resolve())
        payload = {**settings, "work_dir": None if work_dir is None else str(work_dir), "frames_path": frames_path,
                   "calib_path": calib_path, "S": S, "truth": truth}
        h = hashlib.sha256(json.dumps({**settings, "key": ref.key, "frames_path": frames_path}, sort_keys=True).encode())
        for arr in (S, truth.landmarks, truth.true_global, truth.true_local):
            h.update(np.ascontiguousarray(arr).tobytes())
        cases.append(Case(ref.key, payload, fingerprint=h.hexdigest()))
    try:
        report = run_batch(_evaluate_scan_case, cases, out, batch)
    finally:
        close_sandboxes()  # the in-process backend's submission process

    results: list[ScanResult] = []
    for truth, outcome in zip(truths, report.outcomes):
        ref = truth.ref
        if outcome.status == "failed":  # the harness itself failed on this scan (the submission's failures are results)
            result = ScanResult(key=ref.key, subject=ref.subject, scan=ref.scan, status="crash",
                                message=f"the harness failed on this scan: {outcome.error}")
            _set_identity_errors(result, truth, S)
        else:
            result = ScanResult(**outcome.result)
        results.append(result)
    summary = summarise_results(
        results, team=team, submission=str(submission), data=str(Path(data).resolve()), device=device,
        time_limit_s=time_limit_s, memory_limit_gb=memory_limit_gb,
    )
    with atomic_path(out / METRICS_H5) as tmp:
        write_metrics_h5(tmp, results)
    with atomic_path(out / RESULTS_JSON) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    with atomic_path(out / LOG_NAME) as tmp, open(tmp, "wb") as log:
        for truth in truths:
            part = out / _scan_log_name(truth.ref)
            if part.is_file():
                log.write(part.read_bytes())
    return Evaluation(summary, report)


def _scan_log_name(ref: ScanRef) -> str:
    return f"logs/{ref.subject}/{ref.scan}.log"


def _set_identity_errors(result: ScanResult, truth: _Truth, S: np.ndarray) -> None:
    for k, v in identity_errors(truth.true_global, truth.true_local, S, truth.frame_shape, truth.landmarks).items():
        setattr(result, k, v)


# One sandboxed submission process per worker process and settings, reused across that worker's scans.
_SANDBOXES: dict[tuple, tuple[Sandbox, Path]] = {}
_IMPORT_FAILURES: dict[tuple, tuple[str, str]] = {}


def close_sandboxes() -> None:
    """Stop this process's cached submission processes (idempotent)."""
    while _SANDBOXES:
        _, (sandbox, log_dir) = _SANDBOXES.popitem()
        sandbox.close()
        shutil.rmtree(log_dir, ignore_errors=True)
    _IMPORT_FAILURES.clear()


atexit.register(close_sandboxes)


def _sandbox_for(payload: dict) -> tuple[tuple, Sandbox]:
    key = (payload["submission"], payload["submission_sha256"], payload["device"], payload["time_limit_s"],
           payload["memory_limit_gb"])
    if key not in _SANDBOXES:
        # -P: the submission folder (the child's working directory) must not shadow the harness's own imports;
        # the worker adds it to sys.path itself, after importing numpy, h5py, torch and usnav.
        argv = [sys.executable, "-P", "-m", "usnav.harness._tusrec_worker", payload["submission"],
                "--device", payload["device"], "--memory-limit-bytes", str(int(payload["memory_limit_gb"] * 1e9))]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log_dir = Path(tempfile.mkdtemp(prefix="usnav-harness-log-"))
        sandbox = Sandbox(argv, log_dir / LOG_NAME, cwd=Path(payload["submission"]), env=env,
                          startup_timeout_s=max(payload["time_limit_s"], STARTUP_LIMIT_S))
        _SANDBOXES[key] = (sandbox, log_dir)
    return key, _SANDBOXES[key][0]


def _evaluate_scan_case(payload: dict, out: Path) -> dict:
    """Batch task (usnav.batch): run the submission on one scan, score it, write its JSON and log."""
    truth: _Truth = payload["truth"]
    ref = truth.ref
    S = np.asarray(payload["S"], dtype=np.float64)
    result = ScanResult(key=ref.key, subject=ref.subject, scan=ref.scan, status="ok")
    key, sandbox = _sandbox_for(payload)
    log_path = sandbox.log_path
    log_path.touch()
    log_start = log_path.stat().st_size
    extra_log = ""
    if key not in _IMPORT_FAILURES and not sandbox.alive:
        started = sandbox.start()
        if started.status != "ok":
            _IMPORT_FAILURES[key] = (f"the submission could not start: {started.message}", "")
        elif started.reply.get("event") != "ready":
            _IMPORT_FAILURES[key] = (f"predict_ddfs.py failed to import: {started.reply.get('message', '')}",
                                     f"[usnav harness] import traceback:\n{started.reply.get('traceback', '')}\n")
    if key in _IMPORT_FAILURES:
        result.status, result.message = "import-error", _IMPORT_FAILURES[key][0]
        extra_log = _IMPORT_FAILURES[key][1]
    else:
        with tempfile.TemporaryDirectory(prefix="usnav-harness-", dir=payload["work_dir"]) as scan_dir:
            _run_scan(sandbox, result, truth, payload["frames_path"], payload["calib_path"], Path(scan_dir),
                      payload["time_limit_s"], S)
    if result.GPE_identity is None:
        _set_identity_errors(result, truth, S)
    with open(log_path, "rb") as f:
        f.seek(log_start)
        printed = f.read()
    line = f"[usnav harness] {ref.key}: {result.status}" + (f": {result.message}" if result.message else "") + "\n"
    log_out = out / _scan_log_name(ref)
    log_out.parent.mkdir(parents=True, exist_ok=True)
    log_out.write_bytes(printed + extra_log.encode() + line.encode())
    doc = {k: v for k, v in asdict(result).items() if k != "extra"}
    json_out = out / "scans" / ref.subject / f"{ref.scan}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(_finite_json(doc), indent=1) + "\n")
    return doc


def _log(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _run_scan(sandbox: Sandbox, result: ScanResult, truth: _Truth, frames_path: str, calib_path: str,
              scan_dir: Path, time_limit_s: float, S: np.ndarray) -> None:
    ref, landmarks = truth.ref, truth.landmarks
    lm_path = scan_dir / "landmark.npy"
    np.save(lm_path, landmarks.astype(np.int64))
    request = {"frames_path": frames_path, "landmarks_npy": str(lm_path),
               "calib_path": calib_path, "out_dir": str(scan_dir)}
    call: CallResult = sandbox.call(request, timeout_s=time_limit_s)
    if call.status != "ok":
        result.status, result.message = call.status, call.message
        if call.status == "timeout":
            result.time_s = time_limit_s
        return
    reply = call.reply or {}
    event = reply.get("event")
    result.time_s = reply.get("time_s")
    if event == "exception":
        result.status, result.message = "exception", f"predict_ddfs raised {reply.get('message', '')}"
        _log(sandbox.log_path, f"[usnav harness] {ref.key}: traceback of the submission:\n{reply.get('traceback', '')}")
        return
    if event == "invalid":
        result.status, result.message = "invalid", str(reply.get("message", ""))
        return
    if event != "done":
        result.status, result.message = "crash", f"unexpected reply from the submission process: {event!r}: {reply.get('message', '')}"
        sandbox.kill()
        return
    try:
        arrays = {name: NpyRows(scan_dir / f"{name}.npy") for name in ("GP", "LP")}
        arrays.update({name: np.load(scan_dir / f"{name}.npy", allow_pickle=False) for name in ("GL", "LL")})
    except OutputError as exc:
        result.status, result.message = "invalid", str(exc)
        return
    except (OSError, ValueError) as exc:
        result.status, result.message = "invalid", f"the returned arrays could not be read back ({exc})"
        return
    try:
        errors = score_outputs(arrays["GP"], arrays["GL"], arrays["LP"], arrays["LL"], truth.true_global,
                               truth.true_local, S, truth.frame_shape, landmarks)
    except OutputError as exc:
        result.status, result.message = "invalid", str(exc)
        return
    finally:
        del arrays
    for k, v in errors.items():
        setattr(result, k, v)


# --------------------------------------------------------------------------- outputs


def summarise_results(results: list[ScanResult], **meta) -> dict:
    """The JSON summary written as ``results.json``.

    ``scans``: one entry per scan (key, subject, scan, status, message, time_s,
    GPE, GLE, LPE, LLE, the ``*_identity`` errors, ``*_score`` normalised scores
    and ``score``; the same keys as ``usnav tusrec score --json``).
    ``summary``: counts per status; ``mean`` of each metric over the scored
    scans; ``score_failed_as_identity``: mean final score when every failed
    scan counts as the identity prediction (score 0, the 2025 leaderboard rule
    of :mod:`usnav.leaderboard.tusrec`); total and mean seconds.
    """
    rows = [r.as_dict() for r in results]
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    mean: dict[str, float | None] = {}
    for k in [*METRICS, *(f"{m}_identity" for m in METRICS), *(f"{m}_score" for m in METRICS), "score"]:
        values = [row[k] for row in rows if row["status"] == "ok" and row[k] is not None]
        mean[k] = float(np.mean(values)) if values else None
    per_scan = [(r.score if r.status == "ok" and r.score is not None else 0.0) for r in results]
    times = [r.time_s for r in results if r.time_s is not None]
    summary = {
        "challenge": "tusrec",
        "usnav_version": __version__,
        **{k: v for k, v in meta.items() if v is not None},
        "metrics": list(METRICS),
        "scans": rows,
        "summary": {
            "n_scans": len(results),
            "status_counts": counts,
            "mean": mean,
            "score_failed_as_identity": float(np.mean(per_scan)) if per_scan else None,
            "time_total_s": float(sum(times)) if times else None,
            "time_mean_s": float(np.mean(times)) if times else None,
        },
    }
    return _finite_json(summary)


def _finite_json(obj):
    """Replace non-finite floats by None so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_json(v) for v in obj]
    return obj


def write_metrics_h5(path: Path, results: list[ScanResult]) -> None:
    """The official ``metrics.h5``: GPE, GLE, LPE, LLE (mm), time_elapsed (seconds), NaN for failed scans."""
    import h5py

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if getattr(r, name) is None else float(getattr(r, name)) for r in results], dtype=np.float64)

    with h5py.File(path, "w") as f:
        for name in METRICS:
            f.create_dataset(name, data=column(name), track_times=False)
        seconds = np.array([np.nan if r.time_s is None else r.time_s for r in results], dtype=np.float64)
        ds = f.create_dataset("time_elapsed", data=seconds, track_times=False)
        ds.attrs["units"] = "seconds per predict_ddfs call"
        f.attrs["keys"] = np.array([r.key for r in results], dtype="S")
        f.attrs["status"] = np.array([r.status for r in results], dtype="S")
