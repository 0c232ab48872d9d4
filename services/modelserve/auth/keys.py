"""API keys: random tokens handed to callers, stored only as sha256 hashes in a JSON file.

The keys file::

    {"keys": [{"id": "alice", "hash": "sha256:<hex>", "roles": ["infer"],
               "models": ["fraud*"]}]}

``models`` (optional) limits the ``infer`` role to model names matching one of the globs.
The file is read again when it changes, so adding or revoking a key needs no restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelserve.auth.files import Reloading
from modelserve.auth.identity import ADMIN, INFER, ROLES, SERVICE, Identity

TOKEN_PREFIX = "msk_"
HASH_PREFIX = "sha256:"
KNOWN_TOKENS = 1024  # valid tokens remembered per keys-file version (KeyStore.lookup)


def hash_token(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_key(
    key_id: str, roles: Sequence[str], models: Sequence[str] = ()
) -> tuple[str, dict[str, Any]]:
    """A fresh API key: (the token to hand out, its keys-file entry holding only the hash)."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"roles must be some of {', '.join(ROLES)}; got {list(roles)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"id": key_id, "hash": hash_token(token), "roles": list(roles)}
    if models:
        entry["models"] = list(models)
    return token, entry


def parse_keys(text: str) -> dict[str, Identity]:
    """The keys file's entries by hash; ValueError naming the first bad entry."""
    data = json.loads(text)
    entries = data.get("keys", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError("keys file: expected {'keys': [...]} or a list of entries")
    out: dict[str, Identity] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"keys file entry {i}: not an object")
        key_id = entry.get("id") or entry.get("name")
        digest = entry.get("hash", "")
        roles = entry.get("roles", [])
        models = entry.get("models", [])
        if not isinstance(key_id, str) or not key_id:
            raise ValueError(f"keys file entry {i}: no id")
        if not isinstance(digest, str) or not digest.startswith(HASH_PREFIX):
            raise ValueError(f"keys file entry {key_id!r}: hash must be 'sha256:<hex>'")
        if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
            raise ValueError(f"keys file entry {key_id!r}: roles must be some of {ROLES}")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError(f"keys file entry {key_id!r}: models must be a list of globs")
        out[digest.lower()] = Identity(key_id, frozenset(roles), tuple(models), "api-key")
    return out


class KeyStore:
    """Looks a presented token up by its hash in the keys file (reloaded when it changes)."""

    def __init__(self, path: str | Path) -> None:
        self._file = Reloading(path, parse_keys, "API keys")
        # Tokens already found, for the table they were found in: a hop sees the same few
        # tokens on every call, and hashing each one was a third of authenticating it. Only
        # known tokens are kept (random ones cannot grow it), and a reloaded file starts over,
        # so a revoked key stops working as soon as the file is seen to change.
        self._table: dict[str, Identity] | None = None
        self._known: dict[str, Identity] = {}

    def check(self) -> None:
        self._file.get()

    def lookup(self, token: str) -> Identity | None:
        table = self._file.get()
        if table is not self._table:
            self._table, self._known = table, {}
        identity = self._known.get(token)
        if identity is None:
            identity = table.get(hash_token(token))
            if identity is not None:
                if len(self._known) >= KNOWN_TOKENS:
                    self._known.clear()
                self._known[token] = identity
        return identity


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # readers (a reloading service) never see half a file


LOCAL_ROLES = {"admin": [ADMIN], "infer": [INFER], "service": [SERVICE]}


def write_local_tokens(directory: str | Path) -> dict[str, Path]:
    """Tokens for a suite on this machine: ``tokens/admin``, ``tokens/infer``,
    ``tokens/service`` (one token each, mode 0600) and ``keys.json`` holding their hashes.

    Returns ``{"admin": path, "infer": path, "service": path, "keys_file": path}``. Existing
    tokens whose hashes are in the keys file are kept (a restart keeps the same tokens);
    anything missing or stale is made anew.
    """
    root = Path(directory)
    tokens_dir = root / "tokens"
    tokens_dir.mkdir(parents=True, exist_ok=True)
    keys_file = root / "keys.json"
    paths = {name: tokens_dir / name for name in LOCAL_ROLES}
    try:
        known = parse_keys(keys_file.read_text())
        if all(hash_token(p.read_text().strip()) in known for p in paths.values()):
            return {**paths, "keys_file": keys_file}
    except (OSError, ValueError):
        pass
    entries = []
    for name, roles in LOCAL_ROLES.items():
        token, entry = new_key(f"local-{name}", roles)
        _write_private(paths[name], token + "\n")
        entries.append(entry)
    _write_private(keys_file, json.dumps({"keys": entries}, indent=2) + "\n")
    return {**paths, "keys_file": keys_file}
