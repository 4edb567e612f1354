"""Batch manifest: append-only JSON lines, torn-write recovery, compaction, locking, checksums."""

from __future__ import annotations

import hashlib
import json

import pytest

from usnav.batch.manifest import (
    LOCK_NAME,
    MANIFEST_NAME,
    CaseRecord,
    Manifest,
    read_manifest,
    sha256_file,
    verify_record,
)
from usnav.errors import InputError


def _record(folder, key: str, content: bytes, fingerprint: str = "fp") -> CaseRecord:
    rel = f"out/{key}.bin"
    (folder / "out").mkdir(exist_ok=True)
    (folder / rel).write_bytes(content)
    return CaseRecord(
        key=key,
        fingerprint=fingerprint,
        outputs={rel: {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}},
        result={"n": len(content)},
    )


def test_sha256_known_answer(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_append_and_reload(tmp_path):
    with Manifest.open(tmp_path) as m:
        m.append(_record(tmp_path, "a", b"one"))
        m.append(_record(tmp_path, "b", b"two"))
    recs = read_manifest(tmp_path)
    assert sorted(recs) == ["a", "b"]
    assert recs["a"].result == {"n": 3}
    assert verify_record(tmp_path, recs["a"]) is None
    lines = (tmp_path / MANIFEST_NAME).read_bytes().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["v"] == 1 for line in lines)


def test_torn_last_line_is_ignored_and_truncated(tmp_path):
    with Manifest.open(tmp_path) as m:
        m.append(_record(tmp_path, "a", b"one"))
    path = tmp_path / MANIFEST_NAME
    full = path.read_bytes()
    # A SIGKILL in the middle of the second record's write: no newline at the end.
    second = json.dumps(_record(tmp_path, "b", b"two").to_json()).encode()
    path.write_bytes(full + second[: len(second) // 2])
    assert sorted(read_manifest(tmp_path)) == ["a"]
    with Manifest.open(tmp_path) as m:
        assert m.damaged_lines == 1
        assert sorted(m.records) == ["a"]
        m.append(_record(tmp_path, "c", b"three"))
    # The torn bytes are gone; the new record is on its own, parseable line.
    assert path.read_bytes().startswith(full)
    assert sorted(read_manifest(tmp_path)) == ["a", "c"]
    assert all(json.loads(line) for line in path.read_bytes().splitlines())


def test_garbage_line_and_duplicates_are_compacted(tmp_path):
    with Manifest.open(tmp_path) as m:
        m.append(_record(tmp_path, "a", b"one"))
        m.append(_record(tmp_path, "a", b"uno"))  # redone: the later record wins
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(path.read_bytes() + b'{"not": "a record"}\n\x00\x00garbage\n')
    with Manifest.open(tmp_path) as m:
        assert m.damaged_lines == 2
        assert m.records["a"].outputs["out/a.bin"]["bytes"] == 3
    lines = path.read_bytes().splitlines()
    assert len(lines) == 1
    assert verify_record(tmp_path, read_manifest(tmp_path)["a"]) is None  # "uno" is on disk


def test_verify_detects_truncation_bitflip_and_missing(tmp_path):
    rec = _record(tmp_path, "a", b"0123456789")
    assert verify_record(tmp_path, rec) is None
    p = tmp_path / "out/a.bin"
    p.write_bytes(b"01234")
    assert "bytes" in verify_record(tmp_path, rec)
    p.write_bytes(b"0123456780")
    assert "sha256" in verify_record(tmp_path, rec)
    p.unlink()
    assert "missing" in verify_record(tmp_path, rec)


def test_second_writer_is_refused(tmp_path):
    with Manifest.open(tmp_path):
        with pytest.raises(InputError, match="another usnav batch"):
            Manifest.open(tmp_path)
    # Released on close.
    Manifest.open(tmp_path).close()
    assert (tmp_path / LOCK_NAME).exists()


def test_invalid_records_rejected():
    assert CaseRecord.from_json({"v": 1, "key": "a", "fingerprint": "x", "outputs": {"f": {}}}) is None
    assert CaseRecord.from_json({"v": 2, "key": "a", "fingerprint": "x", "outputs": {}}) is None
    assert CaseRecord.from_json([1, 2]) is None
    assert CaseRecord.from_json({"v": 1, "key": "a", "fingerprint": "x", "outputs": {}}).key == "a"
