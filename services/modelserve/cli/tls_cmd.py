"""``modelserve tls init``: the local CA and per-service certificates of ``up --secure``,
written where a deployment without ``up`` needs them (the compose stack's one-shot ``init``
service writes them into the volume every service mounts read-only)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("tls", help="certificates for a suite with TLS and mTLS")
def group() -> None:
    pass


@group.command(
    "init",
    help="write DIR/tls/: a CA, one server+client certificate per --name (SANs: the name, "
    "every --san, localhost, 127.0.0.1) and client.pem for the operator; kept while valid",
)
@click.argument("dir", type=click.Path(path_type=Path))
@click.option("--name", "names", multiple=True, required=True, help="a service (repeatable)")
@click.option("--san", "sans", multiple=True, help="one more SAN of every service certificate")
@click.option(
    "--tokens",
    is_flag=True,
    help="also write DIR/tokens/{admin,infer,service} and DIR/keys.json (auth local-tokens)",
)
def init(dir: Path, names: tuple[str, ...], sans: tuple[str, ...], tokens: bool) -> int:
    from modelserve.auth.keys import write_local_tokens
    from modelserve.cli.tls_material import ensure_local_pki

    pki = ensure_local_pki(dir, list(names), list(sans))
    made = {"ca": str(pki.ca), **{n: str(p.cert) for n, p in pki.pairs.items()}}
    if tokens:
        made.update({f"token {k}": str(v) for k, v in write_local_tokens(dir).items()})
    print(json.dumps(made, indent=2))
    return 0
