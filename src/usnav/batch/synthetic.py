"""Cheap, deterministic tasks to test a batch setup and to benchmark scaling.

``array_case`` writes one ``.npy`` array that depends only on its payload,
after an optional sleep, and can inject failures; ``cpu_case`` burns a fixed
amount of single-threaded CPU (element-wise passes over a seeded array) and
writes the result. Both follow the
:func:`usnav.batch.run_batch` task contract ``task(payload, out) -> result``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["array_case", "cpu_case", "expected_array", "array_cases", "cpu_cases"]


def expected_array(index: int, size: int = 1000, seed: int = 0) -> np.ndarray:
    """The (size,) float64 array that case ``index`` writes."""
    return np.random.default_rng([seed, index]).standard_normal(size)


def _array_relpath(index: int) -> str:
    return f"cases/case_{index:04d}.npy"


def array_case(payload: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write ``cases/case_<index>.npy`` = :func:`expected_array` after ``sleep_s``.

    payload keys: ``index``, ``size`` (1000), ``seed`` (0), ``sleep_s`` (0),
    ``marker_dir`` (optional: a file ``<index>.<pid>.started`` is created there
    when the case starts, so tests can find and kill worker processes),
    ``fail_first`` (raise on the first N attempts, counted with files in
    ``marker_dir``), ``always_fail`` (raise every time).
    """
    index = int(payload["index"])
    marker_dir = payload.get("marker_dir")
    if marker_dir:
        Path(marker_dir).mkdir(parents=True, exist_ok=True)
        (Path(marker_dir) / f"{index}.{os.getpid()}.started").touch()
    if payload.get("always_fail"):
        raise RuntimeError(f"case {index} always fails (injected)")
    fail_first = int(payload.get("fail_first", 0))
    if fail_first:
        tries = sorted(Path(marker_dir).glob(f"{index}.try*"))
        if len(tries) < fail_first:
            (Path(marker_dir) / f"{index}.try{len(tries)}").touch()
            raise RuntimeError(f"case {index} fails on attempt {len(tries) + 1} (injected)")
    time.sleep(float(payload.get("sleep_s", 0.0)))
    arr = expected_array(index, int(payload.get("size", 1000)), int(payload.get("seed", 0)))
    path = out / _array_relpath(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return {"index": index, "sum": float(arr.sum())}


def array_cases(count: int, **payload: Any):
    """``count`` :class:`usnav.batch.Case` of :func:`array_case` with keys ``case_0000`` ..."""
    from usnav.batch.executor import Case

    return [Case(f"case_{i:04d}", {"index": i, **payload}) for i in range(count)]


def cpu_case(payload: dict[str, Any], out: Path) -> dict[str, Any]:
    """CPU-bound: ``iterations`` element-wise passes (sin, cos) over a seeded
    float64 array of ``n`` values, then write ``cpu/case_<index>.npy`` (the first 1000 values).

    Element-wise NumPy runs on one thread whatever the BLAS settings, so one
    case is one core's work: the default (n=200000, iterations=200) is about
    0.9 s of CPU time here. The result holds the CPU seconds used (``cpu_s``).
    """
    import time

    t0 = time.process_time()
    index = int(payload["index"])
    rng = np.random.default_rng([int(payload.get("seed", 0)), index])
    x = rng.standard_normal(int(payload.get("n", 200_000)))
    for _ in range(int(payload.get("iterations", 200))):
        x = np.sin(x) + 0.5 * np.cos(2.0 * x)
    path = out / f"cpu/case_{index:04d}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x[:1000])
    return {"index": index, "mean": float(x.mean()), "cpu_s": time.process_time() - t0}


def cpu_cases(count: int, **payload: Any):
    """``count`` :class:`usnav.batch.Case` of :func:`cpu_case` with keys ``cpu_0000`` ..."""
    from usnav.batch.executor import Case

    return [Case(f"cpu_{i:04d}", {"index": i, **payload}) for i in range(count)]
