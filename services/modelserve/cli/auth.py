"""``modelserve auth``: make API keys (the token once, its hash entry for the keys file) and
the local tokens of a suite on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modelserve.auth.identity import ROLES
from modelserve.auth.keys import new_key, parse_keys, write_local_tokens


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    auth = sub.add_parser("auth", help="API keys and local tokens")
    asub = auth.add_subparsers(dest="auth_command", required=True)
    key = asub.add_parser(
        "new-key", help="make an API key: prints the token once and its keys-file entry"
    )
    key.add_argument("--id", required=True, help="the identity's name (audit logs show it)")
    key.add_argument("--role", action="append", required=True, choices=ROLES)
    key.add_argument(
        "--models", action="append", default=[], help="model glob the infer role is limited to"
    )
    key.add_argument(
        "--keys-file", type=Path, help="also add the entry to this keys file (services reload it)"
    )
    local = asub.add_parser(
        "local-tokens", help="write tokens/{admin,infer,service} and keys.json under DIR"
    )
    local.add_argument("dir", type=Path)


def run(args: argparse.Namespace) -> int:
    if args.auth_command == "local-tokens":
        paths = write_local_tokens(args.dir)
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
        return 0
    models = [m for item in args.models for m in item.split(",") if m]
    try:
        token, entry = new_key(args.id, args.role, models)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.keys_file is not None:
        path: Path = args.keys_file
        data = json.loads(path.read_text()) if path.exists() else {"keys": []}
        entries = data["keys"] if isinstance(data, dict) else data
        if any((e.get("id") or e.get("name")) == args.id for e in entries):
            print(f"error: {path} already has a key with id {args.id}", file=sys.stderr)
            return 2
        entries.append(entry)
        text = json.dumps({"keys": entries}, indent=2) + "\n"
        parse_keys(text)  # never write a file the services would refuse
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(f"token: {token}")
    print("keys-file entry:")
    print(json.dumps(entry, indent=2))
    return 0
