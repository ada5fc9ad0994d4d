"""API keys: made random, configured hashed, checked in constant time.

A key is a random URL-safe token (:func:`new_key`); K2 stores only its SHA-256, as a
``name:sha256hex`` entry in ``api.keys`` (``K2_API__KEYS``). A presented key is hashed
and compared with *every* stored digest through :func:`hmac.compare_digest`, without
stopping at the first match, so neither the time taken nor the name reveals which
stored key (if any) came close. No key is built into the code: the embedded mode's
development key is made at start-up (``k2 serve``) and lives only in that process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from k2.config import ApiSettings
from k2.errors import ConfigError

#: What a key name may look like (it appears in logs, metrics and rate-limit state).
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: Presented keys longer than this are refused unhashed (no real key is that long).
MAX_KEY_LENGTH = 256


def new_key() -> str:
    """A fresh random API key (24 random bytes, URL-safe base64: 32 characters)."""
    return secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """The lower-case SHA-256 hex digest K2 stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_entry(name: str, key: str) -> str:
    """The ``name:sha256hex`` entry to put in ``K2_API__KEYS`` for ``key``.

    Raises :class:`ConfigError` for a name that is not 1-64 of ``A-Z a-z 0-9 _ . -``.
    """
    _check_name(name)
    return f"{name}:{hash_key(key)}"


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"API key name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")


class KeyStore:
    """The configured keys, by name, as SHA-256 digests.

    Several entries may share a name (key rotation: old and new key both valid);
    rate limits apply per name.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._digests: list[tuple[str, bytes]] = []
        for entry in entries:
            name, _, digest = entry.partition(":")
            _check_name(name)
            try:
                raw = bytes.fromhex(digest)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ConfigError(f"API key entry for {name!r} must be name:sha256hex")
            self._digests.append((name, raw))

    @classmethod
    def from_settings(cls, api: ApiSettings) -> KeyStore:
        """The keys of ``api.keys``."""
        return cls(api.keys)

    def add(self, name: str, key: str) -> None:
        """Accept ``key`` under ``name`` from now on (only its hash is kept)."""
        _check_name(name)
        self._digests.append(
            (name, hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest())
        )

    @property
    def names(self) -> list[str]:
        """Names of the configured keys, first appearance first."""
        return list(dict.fromkeys(name for name, _ in self._digests))

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str | None) -> str | None:
        """The name of the key ``presented`` matches, or ``None``.

        Every stored digest is compared (constant time each, no early exit).
        """
        if not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for name, stored in self._digests:
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found
