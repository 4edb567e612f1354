"""Training data: TUS-REC scans cached in memory at the network input size, and batches.

A scan is read once, its frames area-downsampled to the network input
``(h, w)`` (uint8), and kept with its ground-truth poses
``T_image0_from_image`` (N, 4, 4) (frame 0 included as the identity), its
calibration scaling S and original frame shape (for the image-mm points the
losses use). Transforms stay in the original image-mm space, so a network
trained on downsampled frames predicts full-resolution transforms.

Samples are indexed deterministically; batch contents and augmentation depend
only on ``(seed, epoch, step, rank)``, which makes resuming exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from usnav.freehand.infer import prepare_frames
from usnav.freehand.models import grid_points_mm
from usnav.geometry import invert
from usnav.io.tusrec import ScanRef, TusrecDataset, open_dataset

__all__ = ["DatasetScan", "load_dataset_scans", "CachedScan", "load_scans", "split_scans", "pair_index", "window_index", "make_batch"]


@dataclass
class CachedScan:
    """One scan in memory.

    frames: (N, h, w) uint8 at the network input size.
    poses: (N, 4, 4) float64 ``T_image0_from_image`` (poses[0] = I), image-mm.
    T_mm_from_pixel: (4, 4) S of the original frames; frame_shape: original (H, W).
    landmarks: (K, 3) int (frame, x, y 1-based) or None.
    """

    ref: ScanRef
    frames: np.ndarray
    poses: np.ndarray
    T_mm_from_pixel: np.ndarray
    frame_shape: tuple[int, int]
    landmarks: np.ndarray | None
    features: np.ndarray | None = None  # (N-1, F) pair features (``features`` sequence models; frames empty)

    @property
    def n_frames(self) -> int:
        return len(self.poses)

    def points(self, n: int) -> torch.Tensor:
        """(4, n*n) homogeneous image-mm grid points (n=2: the four corners)."""
        return grid_points_mm(self.T_mm_from_pixel, self.frame_shape, n)


def scan_features(dataset: TusrecDataset, ref: ScanRef, frames, cache_dir: str | Path | None = None) -> np.ndarray:
    """Pair features (N-1, F) of a scan (:func:`usnav.freehand.decorrelation.feature_vectors`), cached as
    ``cache_dir/<hash>.npy`` (keyed by the data set path, scan, file size and mtime) when a folder is given."""
    import hashlib

    from usnav.freehand.decorrelation import feature_vectors, pair_features

    target = None
    if cache_dir:
        f = dataset.frames_path(ref)
        stamp = (str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
        key = hashlib.sha1(repr((str(Path(dataset.root).resolve()), ref.subject, ref.scan, stamp)).encode()).hexdigest()[:20]
        target = Path(cache_dir) / f"{key}.npy"
        if target.exists():
            return np.load(target)
    feats = feature_vectors(pair_features(frames, dataset.calibration.T_mm_from_pixel))
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        from usnav.io.atomic import atomic_path

        # a private temporary name per process: DDP ranks may fill the same cache at once
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.save(fh, feats)
    return feats


def load_scans(
    dataset: TusrecDataset, refs: Sequence[ScanRef], input_hw: tuple[int, int],
    progress: Callable[[int], None] | None = None, features: bool = False, cache_dir: str | Path | None = None,
) -> list[CachedScan]:
    """Read and downsample the given scans (needs ground truth); with ``features`` keep the pair
    features instead of frames."""
    out = []
    assert dataset.calibration is not None
    for ref in refs:
        with dataset.open_scan(ref) as scan:
            if features:
                G = scan.T_image0_from_image
                poses = np.concatenate([np.eye(4)[None], G], axis=0)
                out.append(CachedScan(ref, np.zeros((0, 1, 1), np.uint8), poses, dataset.calibration.T_mm_from_pixel.copy(),
                                      scan.frame_shape, scan.landmarks, scan_features(dataset, ref, scan.frames, cache_dir)))
                continue
            small = prepare_frames(scan.frames, input_hw, progress=progress)
            G = scan.T_image0_from_image
            poses = np.concatenate([np.eye(4)[None], G], axis=0)
            out.append(CachedScan(ref, small, poses, dataset.calibration.T_mm_from_pixel.copy(), scan.frame_shape,
                                  scan.landmarks))
    return out


@dataclass(frozen=True, order=True)
class DatasetScan:
    """A scan of one of several data sets: ``dataset`` indexes the list of roots."""

    dataset: int
    ref: ScanRef

    def __str__(self) -> str:
        return f"{self.dataset}:{self.ref}"


def load_dataset_scans(
    datasets: Sequence[TusrecDataset], refs: Sequence[DatasetScan], input_hw: tuple[int, int],
    features: bool = False, cache_dir: str | Path | None = None,
) -> list[CachedScan]:
    """:func:`load_scans` over scans of several data sets, in the order of ``refs``."""
    out = []
    for r in refs:
        out += load_scans(datasets[r.dataset], [r.ref], input_hw, features=features, cache_dir=cache_dir)
    return out


def split_scans(refs: Sequence, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split by scan: ``round(val_fraction * n)`` validation scans (at least 1 if
    ``val_fraction > 0`` and n >= 2), chosen by a seeded permutation."""
    refs = list(refs)
    n_val = int(round(val_fraction * len(refs)))
    if val_fraction > 0 and len(refs) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(refs) - 1)
    order = np.random.default_rng(seed).permutation(len(refs))
    val = sorted((refs[i] for i in order[:n_val]), key=str)
    train = sorted((refs[i] for i in order[n_val:]), key=str)
    return train, val


def pair_index(scans: Sequence[CachedScan]) -> np.ndarray:
    """(M, 2) samples (scan, start) of the adjacent pairs (start, start + 1)."""
    return np.concatenate([np.stack([np.full(s.n_frames - 1, i), np.arange(0, s.n_frames - 1)], 1)
                           for i, s in enumerate(scans)])


def window_index(scans: Sequence[CachedScan], window: int, stride: int, min_frames: int = 0) -> np.ndarray:
    """(M, 2) samples (scan, start) of windows of ``window + 1`` frames starting every ``stride`` frames.

    min_frames > 0: a scan shorter than a window but with at least ``min_frames`` frames gives one
    window starting at 0 (padded by :func:`make_batch`, features only).
    """
    rows = []
    for i, s in enumerate(scans):
        last = s.n_frames - window - 1
        if last < 0:
            if min_frames and s.n_frames >= min_frames:
                rows.append(np.array([[i, 0]]))
            continue
        starts = np.arange(0, last + 1, stride)
        if starts[-1] != last:
            starts = np.append(starts, last)
        rows.append(np.stack([np.full(len(starts), i), starts], 1))
    if not rows:
        raise ValueError(f"no scan has the {window + 1} frames a training window needs")
    return np.concatenate(rows)


def make_batch(
    scans: Sequence[CachedScan], samples: np.ndarray, length: int, rng: np.random.Generator, reverse_p: float = 0.5,
    n_points: int = 2, mirror_p: float = 0.0, start_p: float = 0.0, frame_index: bool = False,
) -> dict[str, torch.Tensor]:
    """A batch of windows of ``length`` frames (length 2 = adjacent pairs).

    samples: (B, 2) (scan, start frame); with probability ``reverse_p`` a window
    is played backwards (time reversal: frames reversed, labels recomputed).
    Returns frames (B, length, h, w) float32 in [0, 1]; local (B, length-1, 4, 4)
    frame t+1 -> frame t; window_global (B, length-1, 4, 4) frame t+1 -> frame 0
    of the window (both float64, image-mm); points (B, 4, P) float64.

    Pair features (scans with ``features``): no time reversal; with probability
    ``start_p`` a window starts at the scan's first frame instead; ``frame_index``
    appends each pair's index in the scan / 1000; a scan shorter than ``length``
    is padded at the end (identity labels) and ``lengths`` (B,) gives the real pairs.
    """
    frames, local, glob, points, lengths = [], [], [], [], []
    for scan_i, start in samples:
        s = scans[int(scan_i)]
        if s.features is not None:  # pair features of pairs (idx[k], idx[k+1]); no time reversal
            if start_p > 0 and rng.random() < start_p:
                start = 0
            n_real = min(length, s.n_frames - int(start))
            idx = np.arange(int(start), int(start) + n_real)
            f = s.features[idx[:-1]]
            if frame_index:
                from usnav.freehand.infer import with_frame_index

                f = with_frame_index(f, int(start))
            f = np.concatenate([f, np.zeros((length - n_real, f.shape[1]), f.dtype)])
            frames.append(f)
            lengths.append(n_real - 1)
            idx = np.concatenate([idx, np.full(length - n_real, idx[-1])])  # padding: the probe rests
        else:
            idx = np.arange(int(start), int(start) + length)
            if rng.random() < reverse_p:
                idx = idx[::-1]
            frames.append(s.frames[idx])
        P = s.poses[idx]
        if s.features is not None and mirror_p > 0 and rng.random() < mirror_p:
            # z-mirrored motion (M P M, M = diag(1, 1, -1, 1)): the pair features (correlations and in-plane
            # motion) cannot tell it from the real one, so the labels must not prefer either sign
            M = np.diag([1.0, 1.0, -1.0, 1.0])
            P = M @ P @ M
        local.append(invert(P[:-1]) @ P[1:])
        glob.append(invert(P[0]) @ P[1:])
        points.append(s.points(n_points))
    batch = {
        "frames": torch.from_numpy(np.stack(frames)).float() if scans[int(samples[0][0])].features is not None
        else torch.from_numpy(np.stack(frames)).float().div_(255.0),
        "local": torch.from_numpy(np.stack(local)),
        "window_global": torch.from_numpy(np.stack(glob)),
        "points": torch.stack(points),
    }
    if lengths:
        batch["lengths"] = torch.tensor(lengths, dtype=torch.int64)
    return batch


def open_training_data(root: str | Path) -> TusrecDataset:
    """Open a data set that must carry ground truth (train or eval layout with transfs/)."""
    return open_dataset(root)
