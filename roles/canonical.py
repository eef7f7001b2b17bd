"""Canonical serialisation and digests (RFC 8785 JSON Canonicalization Scheme)."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonical_json(doc: Any) -> bytes:
    return bytes(rfc8785.dumps(doc))


def sha256_digest(doc: Any) -> str:
    """Hex sha256 of the canonical JSON of ``doc``."""
    return hashlib.sha256(canonical_json(doc)).hexdigest()
