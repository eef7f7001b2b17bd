"""Ed25519 signing keys (PyNaCl): the bot's identity for decisions.

The current key signs; retired keys are kept (public half only) so decisions
signed before a rotation still verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class KeyError_(ValueError):
    """A signing key could not be loaded."""


def keyid_for(public: bytes) -> str:
    return "sophie-ed25519-" + hashlib.sha256(public).hexdigest()[:16]


def public_pem(public: bytes) -> str:
    der = base64.encodebytes(_SPKI_PREFIX + public).decode().replace("\n", "")
    return f"-----BEGIN PUBLIC KEY-----\n{der}\n-----END PUBLIC KEY-----\n"


def public_openssh(public: bytes, comment: str = "sophie") -> str:
    name = b"ssh-ed25519"
    blob = len(name).to_bytes(4, "big") + name + len(public).to_bytes(4, "big") + public
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def generate_seed_file(path: Path) -> bytes:
    """Write a new base64 seed with 0600 permissions; refuse to overwrite."""
    seed = bytes(SigningKey.generate())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(seed).decode() + "\n")
    return seed


def _decode_seed(text: str, origin: str) -> bytes:
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise KeyError_(f"{origin}: not base64") from exc
    if len(seed) != 32:
        raise KeyError_(f"{origin}: an Ed25519 seed is 32 bytes, got {len(seed)}")
    return seed


@dataclass
class KeyRing:
    """Implements :class:`roles.ports.Signer`."""

    signing: SigningKey
    retired: dict[str, VerifyKey]

    @property
    def public(self) -> bytes:
        return bytes(self.signing.verify_key)

    @property
    def keyid(self) -> str:
        return keyid_for(self.public)

    def sign(self, data: bytes) -> bytes:
        return bytes(self.signing.sign(data).signature)

    def verify(self, keyid: str, data: bytes, signature: bytes) -> bool:
        key = self.signing.verify_key if keyid == self.keyid else self.retired.get(keyid)
        if key is None:
            return False
        try:
            key.verify(data, signature)
        except (BadSignatureError, ValueError):
            return False
        return True

    def public_keys(self) -> dict[str, Any]:
        """The JSON served at /.well-known/sophie/keys."""
        keys = [self._describe(self.public, "current")]
        keys += [self._describe(bytes(k), "retired") for k in self.retired.values()]
        return {"keys": keys}

    @staticmethod
    def _describe(public: bytes, status: str) -> dict[str, str]:
        return {
            "keyid": keyid_for(public),
            "algorithm": "ed25519",
            "status": status,
            "public_key_base64": base64.b64encode(public).decode(),
            "public_key_pem": public_pem(public),
        }


def load_keyring(seed_b64: str | None, seed_file: Path | None, data_dir: Path) -> KeyRing:
    """Key from SOPHIE_SIGNING_KEY, else SOPHIE_SIGNING_KEY_FILE, else generated once."""
    if seed_b64:
        seed = _decode_seed(seed_b64, "SOPHIE_SIGNING_KEY")
    else:
        path = seed_file or data_dir / "signing.key"
        if path.exists():
            seed = _decode_seed(path.read_text(), str(path))
        elif seed_file is not None:
            raise KeyError_(f"{path} does not exist (run `sophie keygen --out {path}`)")
        else:
            seed = generate_seed_file(path)
    return KeyRing(SigningKey(seed), _load_retired(data_dir / "retired-keys.json"))


def _load_retired(path: Path) -> dict[str, VerifyKey]:
    """Retired public keys: a JSON list of base64 Ed25519 public keys."""
    if not path.exists():
        return {}
    keys: dict[str, VerifyKey] = {}
    for item in json.loads(path.read_text()):
        raw = base64.b64decode(item)
        keys[keyid_for(raw)] = VerifyKey(raw)
    return keys


def retire_current(ring: KeyRing, data_dir: Path) -> None:
    """Record the current public key as retired (before a rotation)."""
    path = data_dir / "retired-keys.json"
    listed = json.loads(path.read_text()) if path.exists() else []
    entry = base64.b64encode(ring.public).decode()
    if entry not in listed:
        listed.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(listed, indent=2) + "\n")
