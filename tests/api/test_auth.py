"""API keys: hashing, configuration entries, constant-time identification."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from k2.api.auth import MAX_KEY_LENGTH, KeyStore, hash_key, key_entry, new_key
from k2.config import ApiSettings
from k2.errors import ConfigError


def test_new_keys_are_random_and_url_safe() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(k) == 32 and k.replace("-", "").replace("_", "").isalnum() for k in keys)


def test_entry_is_name_and_sha256_and_passes_settings_validation() -> None:
    key = new_key()
    entry = key_entry("alice", key)
    assert entry == f"alice:{hashlib.sha256(key.encode()).hexdigest()}"
    assert key not in entry
    # The entry is what K2_API__KEYS takes (comma separated).
    settings = ApiSettings.model_validate({"keys": f"{entry},{key_entry('bob', new_key())}"})
    assert settings.keys[0] == entry and len(settings.keys) == 2


def test_store_identifies_each_key_by_name() -> None:
    a, b = new_key(), new_key()
    store = KeyStore([key_entry("alice", a), key_entry("bob", b)])
    assert store.identify(a) == "alice"
    assert store.identify(b) == "bob"
    assert store.identify(new_key()) is None
    assert store.identify(None) is None
    assert store.identify("") is None
    assert store.identify(hash_key(a)) is None  # the stored digest is not a key


def test_rotation_two_keys_one_name() -> None:
    old, new = new_key(), new_key()
    store = KeyStore([key_entry("svc", old), key_entry("svc", new)])
    assert store.identify(old) == store.identify(new) == "svc"
    assert store.names == ["svc"] and len(store) == 2


def test_added_key_is_kept_hashed() -> None:
    store = KeyStore()
    key = new_key()
    store.add("dev", key)
    assert store.identify(key) == "dev"
    assert all(key.encode() not in digest for _, digest in store._digests)


def test_every_digest_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first entry still compares the others."""
    keys = [new_key() for _ in range(5)]
    store = KeyStore([key_entry(f"k{i}", k) for i, k in enumerate(keys)])
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("k2.api.auth.hmac.compare_digest", counting)
    assert store.identify(keys[0]) == "k0"
    assert len(calls) == 5
    calls.clear()
    assert store.identify("wrong") is None
    assert len(calls) == 5


def test_overlong_and_odd_keys_are_refused_without_error() -> None:
    store = KeyStore([key_entry("a", new_key())])
    assert store.identify("x" * (MAX_KEY_LENGTH + 1)) is None
    assert store.identify("\udcff\x00ü") is None


@pytest.mark.parametrize(
    "entry",
    ["alice", "alice:" + "0" * 63, ":" + "0" * 64, "al ice:" + "0" * 64, "a:" + "g" * 64],
)
def test_bad_entries_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError):
        KeyStore([entry])


def test_bad_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="name"):
        key_entry("bad:name", new_key())
