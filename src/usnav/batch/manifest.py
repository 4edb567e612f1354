"""The batch manifest: which cases of an output folder are finished, with checksums.

The manifest is an append-only JSON-lines file in the output folder
(``usnav_manifest.jsonl``). Each line records one finished case::

    {"v": 1, "key": "000/LH_rotation", "fingerprint": "<sha256 of the case parameters>",
     "outputs": {"frames_transfs/000/LH_rotation.h5": {"sha256": "...", "bytes": 123}},
     "result": <JSON value returned by the task>, "attempts": 1, "seconds": 2.5,
     "worker": "host:pid", "finished_utc": "2026-11-22T01:02:03Z"}

Durability: a record is written with ONE ``write`` call of the whole line
(newline included) on a file opened with ``O_APPEND``, followed by ``fsync``.
A process killed (SIGKILL) or a machine losing power mid-write can only leave
an incomplete LAST line, without its newline; readers ignore it (and any line
that is not valid JSON), and the next writer truncates it away before
appending. A case therefore counts as finished only when its whole record is on
disk, and its record is written only after all its outputs were renamed into
place. The later record of a key wins; :meth:`Manifest.open` compacts
superseded and damaged lines (write temp + rename).

Only one driver may write a manifest at a time: :meth:`Manifest.open` takes an
exclusive ``flock`` on ``usnav_manifest.lock`` and raises
:class:`usnav.errors.InputError` if another run holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usnav.errors import input_error

__all__ = [
    "MANIFEST_NAME",
    "LOCK_NAME",
    "CaseRecord",
    "Manifest",
    "read_manifest",
    "sha256_file",
    "verify_record",
]

MANIFEST_NAME = "usnav_manifest.jsonl"
LOCK_NAME = "usnav_manifest.lock"
_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class CaseRecord:
    """One finished case as recorded in the manifest.

    outputs: relative path (POSIX, relative to the output folder) ->
    ``{"sha256": hex, "bytes": size}``.
    """

    key: str
    fingerprint: str
    outputs: Mapping[str, Mapping[str, Any]]
    result: Any = None
    attempts: int = 1
    seconds: float = 0.0
    worker: str = ""
    finished_utc: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "v": _VERSION,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "outputs": {k: dict(v) for k, v in self.outputs.items()},
            "result": self.result,
            "attempts": self.attempts,
            "seconds": self.seconds,
            "worker": self.worker,
            "finished_utc": self.finished_utc,
            **dict(self.extra),
        }

    @classmethod
    def from_json(cls, obj: Any) -> CaseRecord | None:
        """Parse one manifest line's object; None if it is not a valid record."""
        if not isinstance(obj, dict) or obj.get("v") != _VERSION:
            return None
        key, fp, outputs = obj.get("key"), obj.get("fingerprint"), obj.get("outputs")
        if not isinstance(key, str) or not isinstance(fp, str) or not isinstance(outputs, dict):
            return None
        for rel, info in outputs.items():
            if not isinstance(rel, str) or not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
                return None
        known = {"v", "key", "fingerprint", "outputs", "result", "attempts", "seconds", "worker", "finished_utc"}
        return cls(
            key=key,
            fingerprint=fp,
            outputs=outputs,
            result=obj.get("result"),
            attempts=int(obj.get("attempts", 1)),
            seconds=float(obj.get("seconds", 0.0)),
            worker=str(obj.get("worker", "")),
            finished_utc=str(obj.get("finished_utc", "")),
            extra={k: v for k, v in obj.items() if k not in known},
        )


def _parse(data: bytes) -> tuple[dict[str, CaseRecord], int, int, int]:
    """Records by key (last wins), number of valid lines, damaged lines, and
    the byte length of the complete-line prefix."""
    records: dict[str, CaseRecord] = {}
    valid = damaged = 0
    end = data.rfind(b"\n") + 1  # bytes after the last newline are an unfinished write
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = CaseRecord.from_json(json.loads(line))
        except (ValueError, UnicodeDecodeError):
            rec = None
        if rec is None:
            damaged += 1
            continue
        valid += 1
        records[rec.key] = rec
    if end < len(data):
        damaged += 1
    return records, valid, damaged, end


def read_manifest(folder: str | Path) -> dict[str, CaseRecord]:
    """Finished-case records of an output folder (empty if it has no manifest).

    Read-only and lock-free: safe while a batch is running.
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    return _parse(data)[0]


def verify_record(folder: str | Path, record: CaseRecord) -> str | None:
    """Check a record's outputs on disk: None if all match, else why not.

    Sizes are compared first (cheap: catches truncation), then sha256.
    """
    root = Path(folder)
    for rel, info in record.outputs.items():
        path = root / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if "bytes" in info and size != int(info["bytes"]):
            return f"{rel} has {size} bytes, {info['bytes']} expected"
        if sha256_file(path) != info["sha256"]:
            return f"{rel} does not match its sha256"
    return None


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path (best effort: errors are ignored)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Manifest:
    """Exclusive, append-only writer of an output folder's manifest.

    Use as a context manager (``with Manifest.open(folder) as m:``).
    """

    def __init__(self, folder: Path, records: dict[str, CaseRecord], fd: int, lock_fd: int, damaged: int) -> None:
        self._lines = len(records)  # lines in the file (after the compaction in open)
        self.folder = folder
        self.path = folder / MANIFEST_NAME
        self.records = records
        self.damaged_lines = damaged
        self._fd = fd
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, folder: str | Path) -> Manifest:
        """Lock the folder's manifest, load it, drop damaged/superseded lines."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise input_error(
                    folder, "another usnav batch is writing to this output folder right now; wait for it or choose another folder"
                ) from None
            raise
        try:
            path = folder / MANIFEST_NAME
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b""
            records, valid, damaged, _ = _parse(data)
            if damaged or valid != len(records):
                _compact(path, records)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(folder, records, fd, lock_fd, damaged)

    def append(self, record: CaseRecord) -> None:
        """Durably record a finished case (one write + fsync)."""
        line = _line(record)
        written = os.write(self._fd, line)
        if written != len(line):  # pragma: no cover - regular files write whole
            raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
        os.fsync(self._fd)
        self._lines += 1
        self.records[record.key] = record

    def close(self) -> None:
        """Release the lock, first compacting superseded lines (redone cases)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._lines != len(self.records):
                _compact(self.path, self.records)
                self._lines = len(self.records)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[CaseRecord]:
        return iter(self.records.values())


def _compact(path: Path, records: dict[str, CaseRecord]) -> None:
    """Rewrite the manifest with one line per finished case (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        for rec in records.values():
            f.write(_line(rec))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _line(record: CaseRecord) -> bytes:
    return (json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n").encode()
