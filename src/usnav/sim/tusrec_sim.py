"""Simulated TUS-REC data sets: scenes + probe motion + B-mode frames + tracker ground truth.

Ground truth is written as the optical tracker would record it:

- ``tforms[n] = T_tracker_from_tool`` with
  ``T_tracker_from_tool = T_tracker_from_world @ T_world_from_image @ inv(C)``,
  so that ``T_tracker_from_image = tforms @ C`` exactly as the official code
  assumes;
- ``C`` (image-mm -> tool) is a rigid, non-identity calibration fixed per
  data set (by the seed) and ``S`` is the probe's pixel scaling; both go to
  ``calib_matrix.csv``;
- ``T_tracker_from_world`` (camera placement) is drawn per scan.

Landmarks: 100 per scan, ``(frame index >= 1, x, y)`` 1-based pixels inside
the fan, on salient structures (boundaries of fascia, bone, vessels,
tendons, sulci, ventricles, ...) found from the scene's tissue labels.

Everything is a deterministic function of the seed, the subject index and
the scan name, so the same arguments produce the same bytes whatever the
number of worker processes.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from usnav.sim.bmode import BModeParams, iter_frames
from usnav.sim.motion import PROTOCOLS_2024, trajectory
from usnav.sim.probe import Probe
from usnav.sim.scene import Scene

__all__ = [
    "SimConfig",
    "scan_names",
    "make_scene",
    "dataset_calibration",
    "tracker_from_world",
    "choose_landmarks",
    "simulate_scan",
    "simulate_dataset",
    "N_LANDMARKS",
]

N_LANDMARKS = 100
ANATOMIES = ("forearm", "brain")
PROTOCOL_SETS = ("rotation", "2024")


@dataclass(frozen=True)
class SimConfig:
    """What to simulate (everything the output bytes depend on)."""

    anatomy: str = "forearm"
    protocol: str = "rotation"  # "rotation" (2025) or "2024" (24 sweeps per subject)
    n_frames: int = 1500
    frame_hw: tuple[int, int] = (480, 640)
    layout: str = "train"
    seed: int = 0
    depth_mm: float = 90.0
    scatterer_spacing_mm: float = 0.2
    scene_voxel_mm: float | None = None  # None: the anatomy's default
    bmode: BModeParams = field(default_factory=BModeParams)

    def probe(self) -> Probe:
        return Probe.for_frame_size(*self.frame_hw, depth_mm=self.depth_mm)

    def validate(self) -> None:
        if self.anatomy not in ANATOMIES:
            raise ValueError(f"anatomy must be one of {', '.join(ANATOMIES)}, got {self.anatomy!r}")
        if self.protocol not in PROTOCOL_SETS:
            raise ValueError(f"protocol must be 'rotation' or '2024', got {self.protocol!r}")
        if self.layout not in ("train", "eval"):
            raise ValueError(f"layout must be 'train' or 'eval', got {self.layout!r}")
        if self.n_frames < 2:
            raise ValueError(f"a scan needs at least 2 frames, got {self.n_frames}")
        h, w = self.frame_hw
        if h < 32 or w < 32:
            raise ValueError(f"frames must be at least 32x32 pixels, got {h}x{w}")
        if not 10.0 <= self.depth_mm <= 90.0:
            raise ValueError(f"imaging depth must be 10-90 mm, got {self.depth_mm:g}")
        if not 0.1 <= self.scatterer_spacing_mm <= 0.4:
            raise ValueError(f"the scatterer spacing must be 0.1-0.4 mm, got {self.scatterer_spacing_mm:g}")
        if self.scene_voxel_mm is not None and not 0.2 <= self.scene_voxel_mm <= 2.0:
            raise ValueError(f"the anatomy voxel size must be 0.2-2 mm, got {self.scene_voxel_mm:g}")


def scan_names(protocol: str) -> list[str]:
    """Scan names of one subject: ``{LH,RH}_rotation`` or the 24 ``{LH,RH}_{Par,Per}_{L,C,S}_{DtP,PtD}``."""
    if protocol == "rotation":
        return ["LH_rotation", "RH_rotation"]
    if protocol == "2024":
        return [f"{side}_{p}" for side in ("LH", "RH") for p in PROTOCOLS_2024]
    raise ValueError(f"protocol must be 'rotation' or '2024', got {protocol!r}")


def subject_name(index: int) -> str:
    return f"{index:03d}"


def _subject_seed(seed: int, subject: int) -> int:
    return int(np.random.default_rng([seed, subject, 31]).integers(0, 2**31))


@functools.lru_cache(maxsize=2)
def make_scene(
    anatomy: str, subject_seed: int, side: str, scatterer_spacing_mm: float = 0.2, voxel_mm: float | None = None
) -> Scene:
    """The scene of one subject's arm (forearm) or hemisphere (brain), cached per process."""
    if anatomy == "forearm":
        from usnav.sim.forearm import make_forearm

        kw = {} if voxel_mm is None else {"voxel_mm": voxel_mm}
        return make_forearm(subject_seed, side, scatterer_spacing_mm=scatterer_spacing_mm, **kw)
    if anatomy == "brain":
        from usnav.sim.brain import make_brain

        kw = {} if voxel_mm is None else {"voxel_mm": voxel_mm}
        return make_brain(subject_seed, side, scatterer_spacing_mm=scatterer_spacing_mm, **kw)
    raise ValueError(f"unknown anatomy {anatomy!r}")


def dataset_calibration(seed: int, probe: Probe):
    """Calibration of a simulated data set: ``S`` from the probe, a realistic rigid ``C`` from the seed.

    ``C`` maps image-mm to a tracking tool clamped on the probe handle: the
    image axes are turned by about (180, 0, 90) degrees relative to the tool
    and the image origin sits tens of mm from the tool origin.
    """
    from usnav.geometry import matrix_from_euler_zyx
    from usnav.io.tusrec import Calibration

    rng = np.random.default_rng([seed, 5])
    angles = np.radians([180.0, 0.0, 90.0]) + np.radians(rng.normal(0.0, 3.0, 3))
    t = np.array([rng.uniform(-25, -15), rng.uniform(60, 80), rng.uniform(-12, 12)])
    C = matrix_from_euler_zyx(angles, t)
    return Calibration(T_mm_from_pixel=probe.T_mm_from_pixel, T_tool_from_mm=C)


def tracker_from_world(rng: np.random.Generator) -> NDArray[np.float64]:
    """A camera placement: the scene about 1-1.4 m in front of the tracker, arbitrary orientation."""
    from usnav.geometry import matrix_from_euler_zyx

    angles = rng.uniform([-0.6, -0.6, -np.pi], [0.6, 0.6, np.pi])
    t = np.array([rng.uniform(-200, 200), rng.uniform(-200, 200), rng.uniform(-1400, -1000)])
    return matrix_from_euler_zyx(angles, t)


def choose_landmarks(
    scene: Scene,
    T_world_from_image: NDArray[np.float64],
    probe: Probe,
    rng: np.random.Generator,
    k: int = N_LANDMARKS,
    step_px: int = 3,
) -> NDArray[np.int64]:
    """(k, 3) landmarks: frame index (>= 1), pixel x, y (1-based), inside the fan, on salient structures.

    Salient pixels are tissue-label boundaries (between ``step_px`` pixel
    neighbours) where one side is a salient class of the scene; if a frame
    has none, any salient-class pixel, then any fan pixel.
    """
    n = len(T_world_from_image)
    frames = np.sort(rng.choice(np.arange(1, n), size=k, replace=(n - 1) < k))
    H, W = probe.frame_hw
    inside = probe.fan_mask
    yy, xx = np.mgrid[1 : H + 1 : step_px, 1 : W + 1 : step_px]
    sub_inside = inside[yy - 1, xx - 1]
    sx, sy = probe.spacing_mm
    pts_img = np.stack([xx * sx, yy * sy, np.zeros_like(xx, dtype=np.float64)], axis=-1)
    salient_ids = np.array([scene.label_names.index(s) for s in scene.salient_labels if s in scene.label_names])
    out = np.zeros((k, 3), dtype=np.int64)
    for m, f in enumerate(frames):
        T = T_world_from_image[f]
        world = pts_img @ T[:3, :3].T + T[:3, 3]
        lab = scene.sample_labels(world)
        sal = np.isin(lab, salient_ids)
        edge = np.zeros_like(sal)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[1:] |= lab[:-1] != lab[1:]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
        # pixels well inside the fan only (not on its border)
        for cand in (edge & sal & sub_inside, sal & sub_inside, sub_inside):
            r, c = np.nonzero(cand)
            if r.size:
                break
        i = rng.integers(r.size)
        out[m] = (f, xx[r[i], c[i]], yy[r[i], c[i]])
    return out


@dataclass
class ScanPlan:
    subject: int
    scan: str

    @property
    def side(self) -> str:
        return self.scan.split("_", 1)[0]

    @property
    def protocol(self) -> str:
        return self.scan.split("_", 1)[1]


def simulate_scan(
    config: SimConfig, subject: int, scan: str
) -> tuple[Scene, NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Plan one scan: (scene, T_world_from_image (N,4,4), tforms (N,4,4), landmarks (100,3)); no frames yet."""
    plan = ScanPlan(subject, scan)
    probe = config.probe()
    sseed = _subject_seed(config.seed, subject)
    scene = make_scene(config.anatomy, sseed, plan.side, config.scatterer_spacing_mm, config.scene_voxel_mm)
    scan_seed = int(np.random.default_rng([config.seed, subject, zlib.crc32(scan.encode())]).integers(0, 2**31))
    T_world_from_image = trajectory(scene.surface, plan.protocol, config.n_frames, probe, scan_seed)
    rng = np.random.default_rng([scan_seed, 1])
    T_tw = tracker_from_world(rng)
    C = dataset_calibration(config.seed, probe).T_tool_from_mm
    tforms = T_tw @ T_world_from_image @ np.linalg.inv(C)
    landmarks = choose_landmarks(scene, T_world_from_image, probe, np.random.default_rng([scan_seed, 2]))
    return scene, T_world_from_image, tforms, landmarks


def render_scan(
    config: SimConfig, scene: Scene, T_world_from_image: NDArray[np.float64], chunk: int = 16
) -> Iterator[tuple[int, NDArray[np.uint8]]]:
    """Yield (start index, frames (n, H, W) uint8) chunks of a scan.

    Frames are rendered concurrently, one per numba thread, a few ahead of the
    consumer (:func:`usnav.sim.bmode.iter_frames`); the bytes do not depend on
    the thread count.
    """
    probe = config.probe()
    n = len(T_world_from_image)
    H, W = probe.frame_hw
    buf = np.empty((min(chunk, n), H, W), dtype=np.uint8)
    start = 0
    k = 0
    for frame in iter_frames(scene, T_world_from_image, probe, config.bmode):
        buf[k] = frame
        k += 1
        if k == buf.shape[0] or start + k == n:
            yield start, buf[:k].copy()
            start += k
            k = 0


def write_one_scan(config: SimConfig, root: Path, subject: int, scan: str, progress: Callable[[int], None] | None = None):
    """Render and write one scan into ``root``; returns its landmarks (100, 3)."""
    from usnav.io.tusrec import ScanWriter

    scene, T_wi, tforms, landmarks = simulate_scan(config, subject, scan)
    with ScanWriter(
        root, subject_name(subject), scan, n_frames=config.n_frames, frame_shape=config.frame_hw, layout=config.layout
    ) as w:
        for start, frames in render_scan(config, scene, T_wi):
            w.write(start, frames, tforms[start : start + len(frames)])
            if progress is not None:
                progress(len(frames))
    return landmarks


def _worker_init(threads: int) -> None:
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)


def _worker_task(args):
    config, root, subject, scan, queue = args

    def progress(n: int) -> None:
        queue.put((subject, scan, n))

    return subject, scan, write_one_scan(config, Path(root), subject, scan, progress)


def simulate_dataset(
    root: str | Path,
    config: SimConfig,
    subjects: int,
    first_subject: int = 0,
    workers: int = 1,
    on_start: Callable[[int, str], None] | None = None,
    on_progress: Callable[[int, str, int], None] | None = None,
) -> list[tuple[str, str]]:
    """Write a whole simulated data set into ``root`` (a new or empty folder).

    Writes ``calib_matrix.csv``, every scan (``config.layout``), the landmark
    files and, for the eval layout, ``dataset_keys.h5``.  Returns the
    (subject, scan) pairs.  ``on_start(subject, scan)`` and
    ``on_progress(subject, scan, n_new_frames)`` report progress.
    """
    from usnav.io.tusrec import write_calibration, write_dataset_keys, write_landmarks

    config.validate()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    probe = config.probe()
    write_calibration(root / "calib_matrix.csv", dataset_calibration(config.seed, probe))
    tasks = [(s, scan) for s in range(first_subject, first_subject + subjects) for scan in scan_names(config.protocol)]
    results: dict[tuple[int, str], NDArray[np.int64]] = {}
    if workers <= 1:
        for s, scan in tasks:
            if on_start:
                on_start(s, scan)
            cb = (lambda n, s=s, scan=scan: on_progress(s, scan, n)) if on_progress else None
            results[(s, scan)] = write_one_scan(config, root, s, scan, cb)
    else:
        import multiprocessing as mp
        import queue as queue_mod
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        manager = ctx.Manager()
        q = manager.Queue()
        threads = max(1, 2 // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as ex:
            futs = [ex.submit(_worker_task, (config, str(root), s, scan, q)) for s, scan in tasks]
            started: set[tuple[int, str]] = set()
            pending = set(futs)
            while pending:
                try:
                    s, scan, n = q.get(timeout=0.2)
                    if (s, scan) not in started:
                        started.add((s, scan))
                        if on_start:
                            on_start(s, scan)
                    if on_progress:
                        on_progress(s, scan, n)
                except queue_mod.Empty:
                    pass
                done = {f for f in pending if f.done()}
                for f in done:
                    s, scan, lm = f.result()
                    results[(s, scan)] = lm
                pending -= done
            while not q.empty():
                s, scan, n = q.get()
                if on_progress:
                    on_progress(s, scan, n)
        manager.shutdown()
    for s in range(first_subject, first_subject + subjects):
        write_landmarks(root, subject_name(s), {scan: results[(s, scan)] for scan in scan_names(config.protocol)})
    pairs = [(subject_name(s), scan) for s, scan in tasks]
    if config.layout == "eval":
        write_dataset_keys(root, pairs)
    return pairs
