"""``modelserve auth``: make API keys (the token once, its hash entry for the keys file) and
the local tokens of a suite on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from modelserve.auth.identity import ROLES
from modelserve.auth.keys import new_key, parse_keys, write_local_tokens
from modelserve.cli.options import Args


@click.group("auth", help="API keys and local tokens")
def group() -> None:
    pass


@group.command("new-key", help="make an API key: prints the token once and its keys-file entry")
@click.option("--id", "key_id", required=True, help="the identity's name (audit logs show it)")
@click.option("--role", multiple=True, required=True, type=click.Choice(ROLES))
@click.option("--models", multiple=True, help="model glob the infer role is limited to")
@click.option(
    "--keys-file",
    type=click.Path(path_type=Path),
    help="also add the entry to this keys file (services reload it)",
)
def new_key_command(key_id: str, role: tuple[str, ...], models: tuple[str, ...],
                    keys_file: Path | None) -> int:  # fmt: skip
    return run(Args(auth_command="new-key", id=key_id, role=list(role), models=list(models),
                    keys_file=keys_file))  # fmt: skip


@group.command("local-tokens", help="write tokens/{admin,infer,service} and keys.json under DIR")
@click.argument("dir", type=click.Path(path_type=Path))
def local_tokens(dir: Path) -> int:
    return run(Args(auth_command="local-tokens", dir=dir))


def run(args: Args) -> int:
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
