"""Checkpoints: a folder per checkpoint, safetensors only (no pickle anywhere).

``<run>/<name>/`` holds
- ``config.json``: ``{"model": <model config>, "train": <training config>, ...}``
- ``model.safetensors``: the network weights (float32),
- ``optimizer.safetensors`` + ``state.json`` (``last`` only): Adam moments and
  step counts flattened to tensors, the torch RNG state, and the position in
  training (epoch, step in epoch, global step, best score) so ``--resume``
  continues exactly where the run stopped.

Each folder is written to a temporary sibling and renamed, so a checkpoint is
either complete or absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from usnav.io.atomic import atomic_dir

__all__ = ["save_checkpoint", "load_training_state"]


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str | Path, model: torch.nn.Module, config: dict, optimizer: torch.optim.Optimizer | None = None,
    state: dict | None = None,
) -> Path:
    """Write a checkpoint folder atomically (weights; optimizer and position if given)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            tensors["rng.torch"] = torch.get_rng_state()
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "state.json").write_text(json.dumps({**(state or {}), "optimizer": meta}, indent=2) + "\n")
    return folder


def load_training_state(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and torch RNG from a ``last`` checkpoint; return its position dict."""
    from safetensors.torch import load_file

    folder = Path(folder)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    torch.set_rng_state(tensors["rng.torch"])
    return state
