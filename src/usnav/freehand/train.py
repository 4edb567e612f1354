"""Training of the learned pose methods (``two-frame``, ``sequence``), single process or DDP.

Run as ``usnav freehand train`` or under ``torchrun --nproc-per-node K -m usnav.cli
freehand train ...``: when ``WORLD_SIZE`` > 1 the process group is initialised
(gloo on CPU, nccl on CUDA), samples are sharded with a ``DistributedSampler``
and gradients averaged by ``DistributedDataParallel``; rank 0 validates, logs
and writes checkpoints.

Outputs in the run folder RUN:
- ``metrics.csv``: one row per epoch (train loss, validation GPE/GLE/LPE/LLE in
  mm and the official score of the validation scans),
- ``last/`` and ``best/`` checkpoints (:mod:`usnav.freehand.checkpoint`), ``best``
  by validation score (by training loss when there is no validation scan),
- ``config.json``: the run configuration.

Determinism: weights are initialised from ``seed``; the order of samples comes
from the sampler seeded with ``seed`` and the epoch; the augmentation of batch
``step`` uses ``numpy.random.default_rng([seed, epoch, step, rank])``. A
resumed run therefore replays exactly what an uninterrupted run would do.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from usnav.errors import InputError

__all__ = ["TrainConfig", "train", "point_errors", "METHODS_LEARNED"]

METHODS_LEARNED = ("two-frame", "sequence")
METRICS_COLUMNS = ("epoch", "global_step", "train_loss", "GPE", "GLE", "LPE", "LLE", "score", "seconds")


@dataclass
class TrainConfig:
    """Training hyper-parameters (saved in ``config.json``)."""

    method: str = "sequence"
    input_hw: tuple[int, int] = (96, 128)
    epochs: int = 10
    batch_size: int = 0  # 0: method default (16 pairs two-frame, 8 windows feature sequence, 4 frame sequence)
    lr: float = 0.0  # 0: method default (1e-4 two-frame and frame-input sequence, 5e-4 feature-input sequence)
    seed: int = 0
    val_fraction: float = 0.2
    steps_per_epoch: int = 0  # 0: a full pass over the training samples
    checkpoint_every: int = 0  # also save ``last`` every K steps (0: at epoch ends only)
    max_minutes: float = 0.0  # stop (and save) after this wall time (0: no limit)
    window: int = 256  # sequence: local transforms per training window
    window_stride: int = 16
    reverse_p: float = 0.5  # time-reversal augmentation probability
    preset: str = "lite"  # two-frame network preset (lite | b1)
    clip_grad: float = 1.0  # gradient norm clipping (0: off)
    mirror_p: float = 0.0  # sequence features: probability of z-mirroring a window's labels (sign symmetry)
    start_p: float = 0.25  # sequence features: probability that a training window starts at the scan's first frame
    frame_index_input: bool = True  # sequence features: each pair's index in the scan as one more input
    infer_window: int = 0  # sequence features: pairs per inference pass (-1: the training window, 0: whole scan)
    min_frames: int = 64  # sequence features: scans shorter than a window but this long give one padded window
    sequence_input: str = "features"  # sequence: "features" (decorrelation pair features) or "frames" (pair CNN)
    feature_cache: str = ""  # folder caching the pair features of training scans ("" = RUN/feature_cache)
    model_overrides: dict = field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        c = TrainConfig(**asdict(self))
        c.input_hw = tuple(c.input_hw)  # type: ignore[assignment]
        if c.batch_size <= 0:
            c.batch_size = 16 if c.method == "two-frame" else (8 if c.sequence_input == "features" else 4)
        if c.lr <= 0:
            c.lr = 1e-4 if c.method == "two-frame" or c.sequence_input == "frames" else 5e-4
        return c


def model_config(cfg: TrainConfig) -> dict:
    from usnav.freehand.models import SequenceConfig, TwoFrameConfig

    if cfg.method == "two-frame":
        m = TwoFrameConfig(preset=cfg.preset, input_hw=tuple(cfg.input_hw)).to_dict()
    elif cfg.method == "sequence":
        m = SequenceConfig(input_hw=tuple(cfg.input_hw), window=cfg.window, input=cfg.sequence_input).to_dict()
        if cfg.sequence_input == "features":
            from usnav.freehand.decorrelation import N_FEATURES

            m.update(n_features=N_FEATURES + int(cfg.frame_index_input), global_mode="chain",
                     infer_window=cfg.infer_window, frame_index_input=cfg.frame_index_input)
    else:
        raise InputError(f"--method must be one of {', '.join(METHODS_LEARNED)} to train, got {cfg.method!r}")
    m.update(cfg.model_overrides)
    return m


def point_errors(T_pred: torch.Tensor, T_true: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distances (..., P) mm between points (B, 4, P) mapped by predicted and true transforms (B, ..., 4, 4)."""
    D = (T_pred - T_true)[..., :3, :]
    extra = D.dim() - 3
    pts = points.view(points.shape[0], *([1] * extra), 4, points.shape[-1])
    return torch.linalg.vector_norm(D @ pts, dim=-2)


def _chain(L: torch.Tensor) -> torch.Tensor:
    """(B, T, 4, 4) locals -> (B, T, 4, 4) window-globals (frame t+1 -> frame 0)."""
    out = []
    acc = L[:, 0]
    out.append(acc)
    for t in range(1, L.shape[1]):
        acc = acc @ L[:, t]
        out.append(acc)
    return torch.stack(out, 1)


def compute_loss(model: torch.nn.Module, method: str, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, dict]:
    """Point-based losses.

    two-frame (the baseline): MSE (mm^2) of the four image corners mapped by the
    predicted vs true local transform.
    sequence: mean point distance (mm, 3x3 grid) of the local transforms +
    0.2 x that of the chained locals (accumulated over the window) + 0.2 x
    that of the global head.
    """
    from usnav.freehand.models import matrix_from_params_deg

    frames = batch["frames"].to(device)
    points = batch["points"].to(device=device, dtype=torch.float32)
    local_true = batch["local"].to(device=device, dtype=torch.float32)
    if method == "two-frame":
        params = model(frames)
        T = matrix_from_params_deg(params)
        D = ((T - local_true[:, 0])[:, :3] @ points)
        loss = D.square().sum(1).mean()
        return loss, {"local_mm": float(D.detach().square().sum(1).sqrt().mean())}
    lengths = batch.get("lengths")
    if lengths is None:
        local, glob = model(frames)
    else:  # padded windows: the losses count the real pairs only
        local, glob = model(frames, lengths)
    L = matrix_from_params_deg(local)
    G = matrix_from_params_deg(glob)
    gtrue = batch["window_global"].to(device=device, dtype=torch.float32)

    def mean(e: torch.Tensor) -> torch.Tensor:  # e (B, T, P)
        if lengths is None:
            return e.mean()
        valid = (torch.arange(e.shape[1], device=e.device)[None] < lengths.to(e.device)[:, None]).to(e.dtype)
        return (e * valid[..., None]).sum() / (valid.sum() * e.shape[-1])

    e_local = mean(point_errors(L, local_true, points))
    e_chain = mean(point_errors(_chain(L), gtrue, points))
    e_head = mean(point_errors(G, gtrue, points))
    loss = e_local + 0.2 * e_chain + 0.2 * e_head
    return loss, {"local_mm": float(e_local.detach()), "chain_mm": float(e_chain.detach()),
                  "global_mm": float(e_head.detach())}


def validate(model: torch.nn.Module, scans, device) -> dict[str, float]:
    """Official scores of the model on cached validation scans (mean over scans)."""
    from usnav.freehand.infer import predict_transforms
    from usnav.geometry import invert
    from usnav.metrics.tusrec import METRICS, score_scan

    rows = []
    for s in scans:
        G, L = predict_transforms(model, s.features if s.features is not None else s.frames, device)
        true_G = s.poses[1:]
        true_L = invert(s.poses[:-1]) @ s.poses[1:]
        sc = score_scan(s.ref.subject, s.ref.scan, G, L, true_G, true_L, s.T_mm_from_pixel, s.frame_shape, s.landmarks)
        rows.append(sc.as_dict())
    out = {}
    for k in (*METRICS, "score"):
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local_rank


def train(
    data: str | Path, out: str | Path, cfg: TrainConfig, device: str = "cpu", resume: bool = False,
    show_progress: bool = True, log: Callable[[str], None] | None = None,
    on_finish: Callable[[torch.nn.Module], None] | None = None,
) -> dict:
    """Train a model; returns ``{"best_score", "epochs", "global_step", "run"}``.

    Under ``WORLD_SIZE > 1`` (torchrun or a spawned test) every process calls
    this function; the process group is created here if needed.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    from usnav.freehand.checkpoint import load_training_state, save_checkpoint
    from usnav.freehand.data import DatasetScan, load_dataset_scans, make_batch, pair_index, split_scans, window_index
    from usnav.freehand.models import build_model
    from usnav.io.tusrec import open_dataset

    cfg = cfg.resolved()
    if cfg.method not in METHODS_LEARNED:
        raise InputError(f"--method must be one of {', '.join(METHODS_LEARNED)} to train, got {cfg.method!r}")
    out = Path(out)
    world, rank, local_rank = _dist_info()
    created_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        created_group = True
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was requested but CUDA is not available")
        device = f"cuda:{local_rank}" if world > 1 else device
    say = log if log is not None else (lambda msg: None)
    is_main = rank == 0

    roots = [Path(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    datasets = [open_dataset(r) for r in roots]
    for r, ds in zip(roots, datasets):
        if ds.calibration is None:
            raise InputError(f"{r}: no calib_matrix.csv: training needs the calibration")
    last_dir = out / "last"
    if out.exists() and (last_dir / "state.json").exists() and not resume:
        raise InputError(f"{out}: run folder already holds a checkpoint; pass --resume to continue it or choose a new --out")
    all_refs = [DatasetScan(i, ref) for i, ds in enumerate(datasets) for ref in ds.scans]
    train_refs, val_refs = split_scans(all_refs, cfg.val_fraction, cfg.seed)
    mcfg = model_config(cfg)
    name = lambda r: f"{roots[r.dataset]}:{r.ref}"  # noqa: E731
    run_config = {"model": mcfg, "train": asdict(cfg), "data": [str(r) for r in roots], "world_size": world,
                  "train_scans": [name(r) for r in train_refs], "val_scans": [name(r) for r in val_refs]}
    from usnav import __version__

    run_config["usnav_version"] = __version__

    t_load = time.time()
    feats = mcfg.get("input") == "features"
    cache = cfg.feature_cache or str(out / "feature_cache")
    train_scans = load_dataset_scans(datasets, train_refs, tuple(cfg.input_hw), feats, cache)
    val_scans = load_dataset_scans(datasets, val_refs, tuple(cfg.input_hw), feats, cache) if is_main else []
    say(f"loaded {len(train_scans)} training and {len(val_refs)} validation scans in {time.time() - t_load:.1f} s")
    if cfg.method == "two-frame":
        samples = pair_index(train_scans)
        length, n_points = 2, 2
    else:
        samples = window_index(train_scans, mcfg["window"], cfg.window_stride, cfg.min_frames if feats else 0)
        length, n_points = mcfg["window"] + 1, 3

    torch.manual_seed(cfg.seed)
    model = build_model(mcfg).to(device)
    if feats:  # input standardisation from the training scans' features
        from usnav.freehand.infer import with_frame_index

        allf = np.concatenate([with_frame_index(s.features) if mcfg.get("frame_index_input") else s.features
                               for s in train_scans]).astype(np.float64)
        with torch.no_grad():
            model.feature_mean.copy_(torch.from_numpy(allf.mean(0)))
            model.feature_std.copy_(torch.from_numpy(np.maximum(allf.std(0), 1e-3)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    position = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -math.inf, "best_loss": math.inf}
    if resume and (last_dir / "state.json").exists():
        position.update(load_training_state(last_dir, model, optimizer))
        say(f"resumed from {last_dir}: epoch {position['epoch']}, step {position['step_in_epoch']}")
    elif is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    net = DistributedDataParallel(model) if world > 1 else model
    sampler = DistributedSampler(range(len(samples)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    per_rank = len(sampler)
    steps = per_rank // cfg.batch_size
    if cfg.steps_per_epoch > 0:
        steps = min(steps, cfg.steps_per_epoch)
    if steps == 0:
        raise InputError(f"{data}: too few training samples ({len(samples)}) for batch size {cfg.batch_size} on {world} process(es)")

    def save_last(epoch: int, step_in_epoch: int) -> None:
        if is_main:
            pos = {**position, "epoch": epoch, "step_in_epoch": step_in_epoch}
            save_checkpoint(last_dir, model, run_config, optimizer, pos)

    metrics_path = out / "metrics.csv"
    t_start = time.time()
    stopped = False
    progress = None
    if is_main and show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        progress.start()
    try:
        for epoch in range(int(position["epoch"]), cfg.epochs):
            sampler.set_epoch(epoch)
            order = np.asarray(list(iter(sampler)))
            first = int(position["step_in_epoch"]) if epoch == position["epoch"] else 0
            task = progress.add_task(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", total=steps, completed=first,
                                     info="") if progress else None
            net.train()
            losses = []
            for step in range(first, steps):
                rng = np.random.default_rng([cfg.seed, epoch, step, rank])
                batch = make_batch(train_scans, samples[order[step * cfg.batch_size : (step + 1) * cfg.batch_size]],
                                   length, rng, cfg.reverse_p, n_points, cfg.mirror_p if feats else 0.0,
                                   cfg.start_p if feats else 0.0, bool(feats and mcfg.get("frame_index_input")))
                loss, parts = compute_loss(net, cfg.method, batch, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                losses.append(float(loss.detach()))
                position["global_step"] = int(position["global_step"]) + 1
                if progress is not None:
                    progress.update(task, advance=1,
                                    info=f"loss {np.mean(losses[-50:]):.4f} " + " ".join(f"{k} {v:.3f}" for k, v in parts.items()))
                if is_main and position["global_step"] % 50 == 0:
                    say(f"epoch {epoch + 1} step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f} "
                        + " ".join(f"{k} {v:.3f}" for k, v in parts.items()))
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                    save_last(epoch, step + 1)
                if cfg.max_minutes:
                    over = (time.time() - t_start) > 60 * cfg.max_minutes
                    if world > 1:  # every rank must stop at the same step
                        flag = torch.tensor([1.0 if over else 0.0])
                        dist.all_reduce(flag)
                        over = bool(flag.item() > 0)
                    if over:
                        stopped = True
                        break
            done_epoch = not stopped or step + 1 == steps
            if progress is not None:
                progress.remove_task(task)
            if is_main:
                train_loss = float(np.mean(losses)) if losses else float("nan")
                vals = validate(model, val_scans, device) if val_scans else {}
                model.train()
                row = {"epoch": epoch + 1, "global_step": position["global_step"], "train_loss": train_loss,
                       **{k: vals.get(k, float("nan")) for k in ("GPE", "GLE", "LPE", "LLE", "score")},
                       "seconds": round(time.time() - t_start, 1)}
                new_file = not metrics_path.exists()
                with metrics_path.open("a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
                    if new_file:
                        w.writeheader()
                    w.writerow(row)
                say("epoch {epoch}: train loss {train_loss:.4f}, val GPE {GPE:.3f} GLE {GLE:.3f} LPE {LPE:.4f} "
                    "LLE {LLE:.4f} score {score:.4f}".format(**row))
                better = (vals["score"] > position["best_score"]) if vals else (train_loss < position["best_loss"])
                if better:
                    position["best_score"] = vals.get("score", position["best_score"]) if vals else position["best_score"]
                    position["best_loss"] = min(position["best_loss"], train_loss)
                    save_checkpoint(out / "best", model, {**run_config, "best": {"epoch": epoch + 1, **vals}})
                if done_epoch:
                    save_last(epoch + 1, 0)
                else:
                    save_last(epoch, step + 1)
            position["epoch"], position["step_in_epoch"] = (epoch + 1, 0) if done_epoch else (epoch, step + 1)
            if world > 1:
                dist.barrier()
            if stopped:
                say(f"stopped after {cfg.max_minutes} minutes")
                break
        if on_finish is not None:
            on_finish(model)
    finally:
        if progress is not None:
            progress.stop()
        if created_group:
            dist.destroy_process_group()
    return {"best_score": position["best_score"], "epochs": position["epoch"], "global_step": position["global_step"],
            "run": str(out)}
