"""Run independent per-case tasks on a local process pool or on Ray, resumably.

One code path for every batch command (``usnav simulate tusrec|remind``,
``usnav freehand predict``, ``usnav remind run``,
``usnav tusrec evaluate-submission``)::

    from usnav.batch import BatchOptions, Case, run_batch

    def simulate_one(payload: dict, out: Path) -> dict:   # module level (picklable)
        ...write files under `out` with the final relative layout...
        return {"n_frames": 1500}                          # JSON value, kept in the manifest

    report = run_batch(simulate_one, [Case("000/LH", {...}), ...], out_dir, BatchOptions(workers=2))

Task contract
-------------
``task(payload, out) -> JSON-serialisable result``. ``out`` is a fresh, empty
staging folder (inside ``out_dir``, same file system); the task writes its
outputs there with the same relative paths they must have in ``out_dir``.
When the task returns, the worker hashes every file (sha256), renames each one
into ``out_dir`` (atomic per file) and only then does the driver append the
case to the manifest. A task that raises leaves nothing behind. Cases must
write disjoint files.

Backends (same semantics)
-------------------------
- ``workers == 1`` and no Ray: in this process, one case after the other.
- ``workers > 1``: a pool of ``workers`` spawned processes.
- ``ray_address``: ``"local"`` starts a private Ray cluster on this machine
  (``workers`` CPUs, default all; loopback only; no dashboard) and stops it
  afterwards; ``"auto"`` or ``"HOST:PORT"`` joins a running cluster (the
  output folder must then be on a file system every node mounts at the same
  path). Each case requests ``Resources(cpus, gpus)``.

Durability
----------
Rerunning the same batch skips cases whose manifest record matches the case's
fingerprint (sha256 of its payload) and whose outputs still match their
checksums; missing, corrupt or changed cases are redone. A case whose task
raises is retried up to ``retries`` more times; a case whose worker process
dies (killed, out of memory) is resubmitted up to ``system_retries`` times.
Cases that still fail are listed with their errors in
``usnav_failures.json``; the others finish, and :attr:`BatchReport.exit_code`
is :data:`EXIT_SOME_FAILED` (3). Bad input to the batch itself raises
:class:`usnav.errors.InputError` (CLI exit code 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from usnav.batch.manifest import (
    LOCK_NAME,
    MANIFEST_NAME,
    CaseRecord,
    Manifest,
    fsync_path,
    read_manifest,
    sha256_file,
    verify_record,
)
from usnav.errors import InputError, input_error

__all__ = [
    "EXIT_SOME_FAILED",
    "FAILURES_NAME",
    "STAGING_NAME",
    "RAY_INSTALL_HINT",
    "Resources",
    "Case",
    "CaseOutcome",
    "BatchOptions",
    "BatchReport",
    "case_fingerprint",
    "run_batch",
    "start_local_ray",
    "connect_ray",
]

#: Exit code of a batch command when some cases failed (0: all finished, 2: bad input).
EXIT_SOME_FAILED = 3
FAILURES_NAME = "usnav_failures.json"
STAGING_NAME = ".usnav_staging"
RAY_INSTALL_HINT = "--ray needs the optional Ray extra, which is not installed: run `pip install -e .[ray]` (or `pip install 'usnav[ray]'`)"

Task = Callable[[Any, Path], Any]


@dataclass(frozen=True)
class Resources:
    """What one case needs: CPU cores (also its thread count) and GPUs (Ray only schedules GPUs)."""

    cpus: float = 1.0
    gpus: float = 0.0

    @classmethod
    def for_device(cls, device: str, cpus: float = 1.0) -> Resources:
        """One GPU per case when ``device`` is CUDA (``"cuda"``, ``"cuda:0"``), else none."""
        return cls(cpus=cpus, gpus=1.0 if str(device).startswith("cuda") else 0.0)


@dataclass(frozen=True)
class Case:
    """One unit of work.

    key: unique, stable name of the case (e.g. ``"000/LH_rotation"``); the
      manifest is keyed by it.
    payload: picklable argument of the task (JSON-like data is best: it is
      hashed into the fingerprint).
    fingerprint: overrides the default fingerprint (sha256 of the JSON of the
      payload); a finished case whose fingerprint changed is redone.
    """

    key: str
    payload: Any = None
    fingerprint: str | None = None


@dataclass
class CaseOutcome:
    """What happened to one case in this run."""

    key: str
    status: Literal["done", "skipped", "failed"]
    result: Any = None
    outputs: dict[str, dict] = field(default_factory=dict)
    attempts: int = 0
    error: str | None = None
    traceback: str | None = None
    redo_reason: str | None = None  # why a previously recorded case was redone


@dataclass(frozen=True)
class BatchOptions:
    """How to run a batch (the CLI's ``--workers``, ``--ray``, ``--retries``).

    workers: local processes (default 1: in this process); with
      ``ray_address="local"`` the CPUs of the private cluster (default: all);
      with a cluster address, a cap on cases running at once (default: none).
    ray_address: None (local pool), ``"local"``, ``"auto"`` or ``"HOST:PORT"``.
    retries: extra attempts of a case whose task raises.
    system_retries: extra attempts of a case whose worker process died.
    resources: per-case request.
    progress: show one aggregated rich progress bar (on stderr).
    description: progress bar label.
    redo: run every case again, even those finished and verified.
    """

    workers: int | None = None
    ray_address: str | None = None
    retries: int = 0
    system_retries: int = 3
    resources: Resources = Resources()
    progress: bool = True
    description: str = "cases"
    redo: bool = False

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise InputError(f"--retries must be 0 or more, got {self.retries}")
        if self.system_retries < 0:
            raise InputError(f"system_retries must be 0 or more, got {self.system_retries}")
        if self.resources.cpus <= 0 or self.resources.gpus < 0:
            raise InputError(f"per-case resources must be positive, got {self.resources}")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise InputError("--ray needs an address: local, auto or HOST:PORT")


@dataclass
class BatchReport:
    """Outcome of :func:`run_batch`, cases in input order."""

    out_dir: Path
    outcomes: list[CaseOutcome]
    backend: str
    seconds: float

    def _with(self, status: str) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list[CaseOutcome]:
        return self._with("done")

    @property
    def skipped(self) -> list[CaseOutcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[CaseOutcome]:
        return self._with("failed")

    @property
    def results(self) -> dict[str, Any]:
        """Task results of finished (done or skipped) cases, by key."""
        return {o.key: o.result for o in self.outcomes if o.status != "failed"}

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0

    def summary(self) -> str:
        n = len(self.outcomes)
        text = (
            f"{n} case{'s' if n != 1 else ''}: {len(self.done)} done, {len(self.skipped)} skipped (already finished), "
            f"{len(self.failed)} failed [{self.backend}, {self.seconds:.1f} s]"
        )
        if self.failed:
            text += f"; errors in {self.out_dir / FAILURES_NAME}"
        return text


# ----------------------------------------------------------------------------- fingerprints


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **dataclasses.asdict(obj)}
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}; give the Case an explicit fingerprint")


def case_fingerprint(case: Case) -> str:
    """sha256 of the case's canonical JSON payload (or its explicit fingerprint)."""
    if case.fingerprint is not None:
        return case.fingerprint
    text = json.dumps(case.payload, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- worker side


def _limit_threads(cpus: float) -> None:
    n = str(max(1, int(cpus)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = n
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.set_num_threads(int(n))
    numba = sys.modules.get("numba")
    if numba is not None:
        with contextlib.suppress(Exception):
            numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:80] or "case"


def _run_case(task: Task, key: str, payload: Any, out_dir: str, limit_threads: float | None) -> dict:
    """Run one attempt of one case (in a worker); never raises.

    Returns ``{"ok": True, "outputs", "result", "seconds", "worker"}`` or
    ``{"ok": False, "error", "traceback", "seconds", "worker"}``.
    """
    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if limit_threads is not None:
        _limit_threads(limit_threads)
    root = Path(out_dir)
    staging_parent = root / STAGING_NAME
    staging: Path | None = None
    try:
        staging_parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{_safe_name(key)}.", dir=staging_parent))
        # The result goes into the manifest: it must be JSON, and a finished case
        # gives the same value whether it ran now or is read back later.
        result = json.loads(json.dumps(task(payload, staging)))
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        outputs: dict[str, dict] = {}
        for p in files:
            fsync_path(p)
            outputs[p.relative_to(staging).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        parents = set()
        for p in files:
            dest = root / p.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(p, dest)
            parents.add(dest.parent)
        for d in parents:
            fsync_path(d)
        return {"ok": True, "outputs": outputs, "result": result, "seconds": time.perf_counter() - t0, "worker": worker}
    except Exception as exc:  # reported to the driver, which retries or records the failure
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "seconds": time.perf_counter() - t0,
            "worker": worker,
        }
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the driver dies, so no orphan keeps writing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the driver died before prctl took effect
            os._exit(1)


def _pool_init(env: dict[str, str]) -> None:
    import signal

    _die_with_parent()
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C


# ----------------------------------------------------------------------------- backends


@dataclass
class _Attempt:
    case: Case
    fingerprint: str
    attempts: int = 0  # attempts started so far
    app_failures: int = 0
    system_failures: int = 0
    last_error: str | None = None
    last_traceback: str | None = None
    redo_reason: str | None = None


class _SystemFailure(Exception):
    """The worker running an attempt died or could not run it."""


class _InlineBackend:
    """Cases run in this process, one after the other."""

    def __init__(self) -> None:
        self.name = "in-process"
        self.max_in_flight = 1
        self._done: list[tuple[int, dict]] = []

    def submit(self, handle: int, task: Task, case: Case, out_dir: str, res: Resources) -> None:
        self._done.append((handle, _run_case(task, case.key, case.payload, out_dir, None)))

    def wait(self, timeout: float) -> list[tuple[int, dict | _SystemFailure]]:
        done, self._done = self._done, []
        return done  # type: ignore[return-value]

    def close(self, wait: bool = True) -> None:
        pass


class _PoolBackend:
    """A pool of ``workers`` spawned processes; rebuilt if a worker dies."""

    def __init__(self, workers: int, resources: Resources) -> None:
        self.name = f"local pool, {workers} processes"
        self.workers = workers
        self.max_in_flight = workers
        n = str(max(1, int(resources.cpus)))
        self._env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}
        self._cpus = resources.cpus
        self._pool = None
        self._futures: dict[Any, int] = {}

    def _ensure_pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_pool_init,
                initargs=(self._env,),
            )
        return self._pool

    def submit(self, handle: int, task: Task, case: Case, out_dir: str, res: Resources) -> None:
        from concurrent.futures.process import BrokenProcessPool

        try:
            fut = self._ensure_pool().submit(_run_case, task, case.key, case.payload, out_dir, self._cpus)
        except BrokenProcessPool:
            self._discard_pool()
            fut = self._ensure_pool().submit(_run_case, task, case.key, case.payload, out_dir, self._cpus)
        self._futures[fut] = handle

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def wait(self, timeout: float) -> list[tuple[int, dict | _SystemFailure]]:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as futures_wait

        if not self._futures:
            return []
        ready, _ = futures_wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out: list[tuple[int, dict | _SystemFailure]] = []
        broken = False
        for fut in ready:
            handle = self._futures.pop(fut)
            try:
                out.append((handle, fut.result()))
            except Exception as exc:  # BrokenProcessPool, pickling errors
                broken = True
                out.append((handle, _SystemFailure(f"worker process failed: {type(exc).__name__}: {exc}")))
        if broken:
            # Every other future of a broken pool fails too; collect them now.
            for fut in list(self._futures):
                if fut.done():
                    handle = self._futures.pop(fut)
                    try:
                        out.append((handle, fut.result()))
                    except Exception as exc:
                        out.append((handle, _SystemFailure(f"worker process failed: {type(exc).__name__}: {exc}")))
            if not self._futures:
                self._discard_pool()
        return out

    def close(self, wait: bool = True) -> None:
        """Stop the pool; ``wait=False`` (interrupted run) does not wait for
        running cases: the workers die with the driver, and their unrecorded
        cases are redone by the next run."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(RAY_INSTALL_HINT) from None
    return ray


@contextlib.contextmanager
def _single_machine_ray():
    """Ray's single-machine mode while a cluster is started or joined: every
    address stays 127.0.0.1 (Ray otherwise swaps loopback for the machine's
    IP). Its processes inherit ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``."""
    name = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved_env = os.environ.get(name)
    os.environ[name] = "0"  # read when ray is imported
    try:
        _import_ray()
        from ray._private import ray_constants

        saved = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before
        try:
            yield
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = saved
    finally:
        _restore_env(name, saved_env)


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None):
    """Start a private Ray cluster on this machine: loopback only, no dashboard.

    Every Ray server of the cluster listens on 127.0.0.1 only. Returns the
    ``ray`` module.
    """
    import logging

    with _single_machine_ray():
        import ray

        ray.init(
            address="local",  # always a new cluster, never one found on this machine
            num_cpus=num_cpus or os.cpu_count() or 1,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            object_store_memory=256 * 1024**2,
            _node_ip_address="127.0.0.1",
        )
    return ray


def connect_ray(address: str):
    """Join a running Ray cluster (``"auto"`` or ``"HOST:PORT"``); returns ``ray``.

    Raises :class:`InputError` at once when no cluster answers there (Ray
    itself would wait for minutes). A loopback address joins in Ray's
    single-machine mode, so a ``ray start --head`` bound to 127.0.0.1 works.
    """
    import ipaddress
    import logging

    ray = _import_ray()
    target = address
    if address == "auto":
        try:
            from ray._private import services

            target = services.get_ray_address_from_environment("auto", None)
        except Exception as exc:  # ConnectionError when there is none
            raise InputError(f"--ray auto: found no Ray cluster started on this machine ({exc}); start one with `ray start --head`") from None
        if not target:
            raise InputError("--ray auto: found no Ray cluster started on this machine; start one with `ray start --head`")
    host, sep, port = str(target).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"--ray must be local, auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise InputError(f"--ray {address}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); start it with `ray start --head` or check the address") from None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    # "auto" stays "auto" for Ray: only then does it turn token authentication on
    # by itself when it finds a token (~/.ray/auth_token); an explicit address
    # needs RAY_AUTH_MODE=token for a cluster with token authentication.
    kwargs = {"address": "auto" if address == "auto" else f"{host}:{port}", "log_to_driver": False,
              "logging_level": logging.WARNING}
    try:
        if loopback:
            with _single_machine_ray():
                ray.init(**kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else "; if the cluster uses token authentication, set RAY_AUTH_MODE=token"
        raise InputError(f"--ray {address}: could not join the Ray cluster ({exc}){hint}") from None
    return ray


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class _RayBackend:
    """Cases as Ray tasks with per-case resource requests."""

    def __init__(self, address: str, workers: int | None, resources: Resources) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started = False
        self._refs: dict[Any, int] = {}
        if not ray.is_initialized():
            if address == "local":
                start_local_ray(num_cpus=workers)
            else:
                connect_ray(address)
            self._started = True
        try:
            self._setup(address, workers, resources)
        except BaseException:
            self.close()
            raise

    def _setup(self, address: str, workers: int | None, resources: Resources) -> None:
        ray = self._ray
        cluster = ray.cluster_resources()
        if resources.gpus > cluster.get("GPU", 0):
            raise InputError(f"each case needs {resources.gpus:g} GPU but the Ray cluster has {cluster.get('GPU', 0):g}")
        if resources.cpus > cluster.get("CPU", 0):
            raise InputError(f"each case needs {resources.cpus:g} CPUs but the Ray cluster has {cluster.get('CPU', 0):g}")
        slots = max(1, int(cluster.get("CPU", 1) // resources.cpus))
        if resources.gpus > 0:
            slots = min(slots, max(1, int(cluster.get("GPU", 0) // resources.gpus)))
        if workers is not None and address != "local":
            slots = min(slots, workers)
        self.max_in_flight = slots if (workers is not None and address != "local") else 2 * slots
        where = "private local cluster" if address == "local" else f"cluster {address}"
        self.name = f"Ray {where}, {int(cluster.get('CPU', 0))} CPUs"
        self._remote = ray.remote(_run_case).options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0, retry_exceptions=False
        )
        self._cpus = resources.cpus

    def submit(self, handle: int, task: Task, case: Case, out_dir: str, res: Resources) -> None:
        ref = self._remote.remote(task, case.key, case.payload, out_dir, self._cpus)
        self._refs[ref] = handle

    def wait(self, timeout: float) -> list[tuple[int, dict | _SystemFailure]]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        # Take every other finished one too.
        rest = [r for r in self._refs if r not in ready]
        if ready and rest:
            more, _ = self._ray.wait(rest, num_returns=len(rest), timeout=0)
            ready = list(ready) + list(more)
        out: list[tuple[int, dict | _SystemFailure]] = []
        for ref in ready:
            handle = self._refs.pop(ref)
            try:
                out.append((handle, self._ray.get(ref)))
            except Exception as exc:  # WorkerCrashedError, NodeDiedError, RayTaskError (unpicklable task), ...
                out.append((handle, _SystemFailure(f"Ray worker failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")))
        return out

    def close(self, wait: bool = True) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


def _make_backend(options: BatchOptions):
    if options.ray_address is not None:
        return _RayBackend(str(options.ray_address).strip(), options.workers, options.resources)
    workers = options.workers or 1
    if workers == 1:
        return _InlineBackend()
    return _PoolBackend(workers, options.resources)


# ----------------------------------------------------------------------------- driver


def _now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_failures(out_dir: Path, failed: list[CaseOutcome]) -> None:
    from usnav.io.atomic import atomic_path

    path = out_dir / FAILURES_NAME
    if not failed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    payload = {
        "finished_utc": _now_utc(),
        "failed": [
            {"key": o.key, "attempts": o.attempts, "error": o.error, "traceback": o.traceback} for o in failed
        ],
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


class _Progress:
    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.description = description
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,  # the summary line replaces it
            )
            self._progress.start()
            self._task = self._progress.add_task(self._label(), total=total)

    def _label(self) -> str:
        c = self.counts
        return f"{self.description}: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed"

    def advance(self, status: str) -> None:
        self.counts[status] += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=self._label())

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def run_batch(task: Task, cases: Sequence[Case], out_dir: str | Path, options: BatchOptions | None = None) -> BatchReport:
    """Run ``task`` for every case not already finished in ``out_dir``.

    task: module-level function ``task(payload, out) -> JSON result`` (see the
      module docstring); it must be importable by the workers (a script that
      defines it must guard its top level with ``if __name__ == "__main__":``,
      as the pool spawns fresh interpreters).
    cases: unique keys.
    out_dir: output folder (created); holds the manifest, the failures file
      and a staging folder removed at the end.

    Returns the :class:`BatchReport`; raises :class:`InputError` for bad
    options, duplicate keys, a folder in use by another batch, or ``--ray``
    without Ray installed.
    """
    options = options or BatchOptions()
    options.validate()
    out = Path(out_dir).absolute()
    keys = [c.key for c in cases]
    if any(not isinstance(k, str) or not k for k in keys):
        raise InputError("every case needs a non-empty string key")
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:3]
        raise InputError(f"case keys must be unique; repeated: {', '.join(dup)}")
    if out.exists() and not out.is_dir():
        raise input_error(out, "output path exists and is not a folder")
    if options.ray_address is not None:
        _import_ray()  # fail early, before any output, if the extra is missing
    t0 = time.perf_counter()
    created = not out.exists()
    try:
        return _run_batch(task, cases, keys, out, options, t0)
    except BaseException:
        # Nothing finished in a folder this call created (e.g. a Ray cluster that
        # could not be reached): leave no trace.
        if created and out.is_dir() and not read_manifest(out):
            leftovers = {p.name for p in out.iterdir()}
            if leftovers <= {MANIFEST_NAME, LOCK_NAME, STAGING_NAME, FAILURES_NAME}:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _run_batch(task: Task, cases: Sequence[Case], keys: list[str], out: Path, options: BatchOptions,
               t0: float) -> BatchReport:
    with Manifest.open(out) as manifest:
        shutil.rmtree(out / STAGING_NAME, ignore_errors=True)  # left by a killed run (we hold the lock)
        progress = _Progress(options.progress, len(cases), options.description)
        outcomes: dict[str, CaseOutcome] = {}
        pending: list[_Attempt] = []
        try:
            for case in cases:
                fp = case_fingerprint(case)
                rec = manifest.records.get(case.key)
                reason = None
                if rec is not None and options.redo:
                    reason = "redo requested"
                elif rec is not None:
                    if rec.fingerprint != fp:
                        reason = "parameters changed"
                    else:
                        reason = verify_record(out, rec)
                    if reason is None:
                        outcomes[case.key] = CaseOutcome(
                            case.key, "skipped", result=rec.result, outputs=dict(rec.outputs), attempts=0
                        )
                        progress.advance("skipped")
                        continue
                pending.append(_Attempt(case, fp, redo_reason=reason))
            backend_name = "nothing to run"
            if pending:
                backend = _make_backend(options)
                backend_name = backend.name
                try:
                    _drive(backend, task, pending, out, options, manifest, outcomes, progress)
                except BaseException:
                    backend.close(wait=False)
                    raise
                backend.close()
        finally:
            progress.close()
        shutil.rmtree(out / STAGING_NAME, ignore_errors=True)
        ordered = [outcomes[k] for k in keys if k in outcomes]
        _write_failures(out, [o for o in ordered if o.status == "failed"])
    return BatchReport(out_dir=out, outcomes=ordered, backend=backend_name, seconds=time.perf_counter() - t0)


def _drive(backend, task: Task, pending: list[_Attempt], out: Path, options: BatchOptions, manifest: Manifest,
           outcomes: dict[str, CaseOutcome], progress: _Progress) -> None:
    queue = list(pending)
    queue.reverse()  # pop() from the end keeps the input order
    in_flight: dict[int, _Attempt] = {}
    next_handle = 0
    while queue or in_flight:
        while queue and len(in_flight) < backend.max_in_flight:
            att = queue.pop()
            att.attempts += 1
            in_flight[next_handle] = att
            backend.submit(next_handle, task, att.case, str(out), options.resources)
            next_handle += 1
        for handle, res in backend.wait(timeout=0.5):
            att = in_flight.pop(handle)
            key = att.case.key
            if isinstance(res, _SystemFailure):
                att.system_failures += 1
                att.last_error, att.last_traceback = str(res), None
                retry = att.system_failures <= options.system_retries
            elif not res["ok"]:
                att.app_failures += 1
                att.last_error, att.last_traceback = res["error"], res["traceback"]
                retry = att.app_failures <= options.retries
            else:
                rec = CaseRecord(
                    key=key,
                    fingerprint=att.fingerprint,
                    outputs=res["outputs"],
                    result=res["result"],
                    attempts=att.attempts,
                    seconds=round(res["seconds"], 3),
                    worker=res["worker"],
                    finished_utc=_now_utc(),
                )
                manifest.append(rec)
                outcomes[key] = CaseOutcome(key, "done", result=res["result"], outputs=res["outputs"],
                                            attempts=att.attempts, redo_reason=att.redo_reason)
                progress.advance("done")
                continue
            if retry:
                queue.append(att)
            else:
                outcomes[key] = CaseOutcome(key, "failed", attempts=att.attempts, error=att.last_error,
                                            traceback=att.last_traceback, redo_reason=att.redo_reason)
                progress.advance("failed")
