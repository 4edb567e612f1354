"""Batch layer: per-case work on a local process pool or on Ray, resumable and crash-safe.

See :mod:`usnav.batch.executor` for the task contract and the semantics, and
``docs/scaling.md`` for running on a multi-node Ray cluster.
"""

from usnav.batch.executor import (
    EXIT_SOME_FAILED,
    FAILURES_NAME,
    RAY_INSTALL_HINT,
    STAGING_NAME,
    BatchOptions,
    BatchReport,
    Case,
    CaseOutcome,
    Resources,
    case_fingerprint,
    run_batch,
    connect_ray,
    start_local_ray,
)
from usnav.batch.manifest import MANIFEST_NAME, CaseRecord, Manifest, read_manifest, sha256_file, verify_record

__all__ = [
    "EXIT_SOME_FAILED",
    "FAILURES_NAME",
    "MANIFEST_NAME",
    "RAY_INSTALL_HINT",
    "STAGING_NAME",
    "BatchOptions",
    "BatchReport",
    "Case",
    "CaseOutcome",
    "CaseRecord",
    "Manifest",
    "Resources",
    "case_fingerprint",
    "read_manifest",
    "run_batch",
    "sha256_file",
    "connect_ray",
    "start_local_ray",
    "verify_record",
]
