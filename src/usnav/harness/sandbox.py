"""Run untrusted code in a separate process with a memory limit and time limits.

The child is started with ``subprocess.Popen`` in its own session (so it and
anything it forks can be killed as a group), with stdin closed and
stdout/stderr appended to a log file. Requests and replies are single JSON
lines over two private pipes whose file descriptors the child receives on its
command line, so nothing the submission prints can corrupt the protocol.

Big arrays never travel through the pipes: the child writes them to files
(``.npy``) in a folder the request names, and the parent memory-maps them.

Protocol: after start-up the child sends ``{"event": "ready"}`` (or
``{"event": "import-error", "message": ...}``); then for every request line it
answers one reply line with an ``event`` field. Whatever the child does
(endless loop, crash, os._exit, a segfault, running out of memory), the parent
gets a :class:`CallResult` with a status and one clear message, and a dead or
killed child is simply restarted for the next request.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CallResult", "Sandbox", "describe_exit"]

_POLL_S = 0.05


@dataclass
class CallResult:
    """Outcome of starting the child or of one request.

    status: ``"ok"`` (a reply arrived), ``"timeout"`` (killed after the time
        limit), ``"crash"`` (the child died without replying).
    reply: the decoded reply (``None`` unless status is ``"ok"``).
    message: a one-sentence description for reports (empty when ok).
    wall_s: wall-clock seconds the parent waited.
    """

    status: str
    reply: dict[str, Any] | None = None
    message: str = ""
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def describe_exit(returncode: int | None) -> str:
    """``"exit code 3"`` or ``"signal SIGSEGV"`` for a child's return code."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class Sandbox:
    """One child process running ``argv`` (which must accept ``--request-fd``
    and ``--reply-fd`` options, added here) with an address-space limit.

    memory_limit_bytes: ``RLIMIT_AS`` applied by the child itself before it
        imports anything (``None``: no limit). The child must call
        :func:`apply_limits` (the worker modules do).
    """

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 300.0,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._req_w: int | None = None
        self._rep_r: int | None = None
        self._buffer = b""

    # ------------------------------------------------------------------ lifecycle

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> CallResult:
        """Start the child and wait for its first message (``ready`` or an import error)."""
        self.kill()
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        argv = self.argv + ["--request-fd", str(req_r), "--reply-fd", str(rep_w)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(req_r, rep_w),
                cwd=self.cwd, env=self.env, start_new_session=True, close_fds=True,
            )
        os.close(req_r)
        os.close(rep_w)
        self._req_w, self._rep_r, self._buffer = req_w, rep_r, b""
        return self._wait_reply(self.startup_timeout_s, what="start-up")

    def call(self, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Send one request and wait at most ``timeout_s`` seconds for the reply;
        on timeout the child (and its process group) is killed."""
        if not self.alive or self._req_w is None:
            return CallResult("crash", message="the submission process is not running")
        try:
            os.write(self._req_w, (json.dumps(request) + "\n").encode())
        except OSError as exc:
            return CallResult("crash", message=f"cannot send the request to the submission process ({exc})")
        return self._wait_reply(timeout_s, what="the call")

    def kill(self) -> None:
        """Kill the child's whole process group and close the pipes (idempotent)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                pass
        for fd in (self._req_w, self._rep_r):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._proc, self._req_w, self._rep_r, self._buffer = None, None, None, b""

    def close(self) -> None:
        """Ask the child to stop (close its request pipe), then kill what is left."""
        if self._req_w is not None:
            try:
                os.close(self._req_w)
            except OSError:
                pass
            self._req_w = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ replies

    def _wait_reply(self, timeout_s: float, what: str) -> CallResult:
        assert self._rep_r is not None and self._proc is not None
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        eof = False
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                return CallResult("timeout", message=f"{what} exceeded the time limit of {timeout_s:g} s and was killed",
                                  wall_s=time.monotonic() - t0)
            if eof:
                # The pipe is closed: wait for the exit status, then report.
                if self._proc.poll() is not None:
                    break
                time.sleep(_POLL_S)
                continue
            ready, _, _ = select.select([self._rep_r], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(self._rep_r, 1 << 16)
                if not chunk:
                    eof = True
                self._buffer += chunk
            elif self._proc.poll() is not None:
                # Dead, but a forked grandchild may hold the pipe open.
                break
        wall = time.monotonic() - t0
        if b"\n" not in self._buffer:
            code = self._proc.poll()
            self.kill()
            hint = ""
            if code is not None and code < 0 and -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS):
                hint = " (possibly out of memory)"
            return CallResult("crash", message=f"the submission process died during {what} ({describe_exit(code)}){hint}",
                              wall_s=wall, extra={"returncode": code})
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except ValueError:
            self.kill()
            return CallResult("crash", message=f"the submission process sent an unreadable reply during {what}", wall_s=wall)
        return CallResult("ok", reply=reply, wall_s=wall)


def apply_limits(memory_limit_bytes: int | None) -> None:
    """In the child: cap the address space (``RLIMIT_AS``) and disable core dumps."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_limit_bytes is not None and memory_limit_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
