"""``modelserve shadow``: what routers recorded of shadow traffic, read from every router.

modelserve shadow disagreements MODEL --router A,B [--limit N] [--json]   # kept pairs
modelserve shadow report MODEL --router A,B       # the same as ``policy shadow-report``

``disagreements`` asks each router (``RouterControl.ShadowDisagreements``) for the sample of
pairs that disagreed and of shadow calls that failed, merges them newest first, and prints a
table, each entry followed by both answers as kept (cut short: ``…`` marks values left out),
or everything as JSON. Routers are named as for ``shadow-report``: ``--router`` once or more,
each a comma-separated list.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import click
from google.protobuf.json_format import MessageToDict

from modelserve.cli import completion, connect, shadow_report
from modelserve.cli.options import client, output_format, read_command
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc

routers_of = shadow_report.routers_of


@click.group("shadow", help="what routers recorded of shadow traffic")
def group() -> None:
    pass


@group.command("disagreements", help="kept shadow pairs that disagreed, and shadow failures")
@click.argument("model", shell_complete=completion.model_names)
@shadow_report.router_option
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="newest N over all routers (0: all)",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON (as -o json)")
@click.pass_context
@read_command
def disagreements(ctx: click.Context, model: str, router: tuple[str, ...], limit: int,
                  as_json: bool) -> int:  # fmt: skip
    client(ctx)
    json_wanted = as_json or output_format(ctx) == "json"
    answers = asyncio.run(fetch(model, routers_of(router), limit))
    print(
        as_json_text(model, answers, limit)
        if json_wanted
        else "\n".join(render(model, answers, limit))
    )
    return 0


@group.command("report", help="agreement and latency of shadow traffic (as policy shadow-report)")
@click.argument("model", shell_complete=completion.model_names)
@shadow_report.router_option
@click.pass_context
@read_command
def report(ctx: click.Context, model: str, router: tuple[str, ...]) -> int:
    client(ctx)
    asyncio.run(shadow_report.print_report(model, routers_of(router), output_format(ctx)))
    return 0


@dataclass(frozen=True)
class RouterAnswer:
    address: str
    answer: router_pb2.ShadowDisagreementsResponse


async def fetch(model: str, routers: Sequence[str], limit: int) -> list[RouterAnswer]:
    async def one(address: str) -> RouterAnswer:
        async with connect.channel(address) as channel:
            stub = router_pb2_grpc.RouterControlStub(channel)
            request = router_pb2.ShadowDisagreementsRequest(model=model, limit=limit)
            answer = await stub.ShadowDisagreements(request, timeout=10)
            return RouterAnswer(address, answer)

    return list(await asyncio.gather(*(one(a) for a in routers)))


def merged(
    answers: Sequence[RouterAnswer], limit: int
) -> list[tuple[str, router_pb2.ShadowDisagreement]]:
    """Every router's entries, newest first, the newest ``limit`` (0: all)."""
    entries = [(a.address, e) for a in answers for e in a.answer.entries]
    entries.sort(key=lambda pair: pair[1].unix_ms, reverse=True)
    return entries[:limit] if limit > 0 else entries


def as_json_text(model: str, answers: Sequence[RouterAnswer], limit: int) -> str:
    return json.dumps(
        {
            "model": model,
            "routers": [
                {
                    "router": a.address,
                    "disagreements_seen": a.answer.disagreements_seen,
                    "failures_seen": a.answer.failures_seen,
                    "disagreements_capacity": a.answer.disagreements_capacity,
                    "failures_capacity": a.answer.failures_capacity,
                }
                for a in answers
            ],
            "entries": [
                {"router": address, **MessageToDict(e, preserving_proto_field_name=True)}
                for address, e in merged(answers, limit)
            ],
        },
        indent=2,
    )


def _when(unix_ms: int) -> str:
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix_ms / 1000)) + f".{unix_ms % 1000:03d}"
    )


def _difference(e: router_pb2.ShadowDisagreement) -> str:
    if e.error:
        return f"{'timeout' if e.timeout else 'error'}: {e.error}"
    if e.reason:
        return e.reason
    return f"{e.max_abs_diff:.4g} in {e.max_diff_output}"


def _values(t: router_pb2.ShadowTensorSample) -> str:
    shown = [*(f"{v:.6g}" for v in t.values), *(repr(v) for v in t.text_values)]
    more = ", …" if t.truncated else ""
    return f"{t.name} {t.datatype}{list(t.shape)}: [{', '.join(shown)}{more}]" + (
        f" ({len(shown)} of {t.total_values})" if t.truncated else ""
    )


def render(model: str, answers: Sequence[RouterAnswer], limit: int) -> list[str]:
    entries = merged(answers, limit)
    seen = sum(a.answer.disagreements_seen for a in answers)
    failed = sum(a.answer.failures_seen for a in answers)
    bound = max((a.answer.disagreements_capacity for a in answers), default=0)
    failures_bound = max((a.answer.failures_capacity for a in answers), default=0)
    head = (
        f"{model}: {seen} disagreements and {failed} shadow failures seen on "
        f"{len(answers)} router(s), each keeping a uniform sample of at most {bound} "
        f"disagreements and {failures_bound} failures; the newest {len(entries)} kept:"
    )
    if not entries:
        return [head]
    rows = [("TIME (UTC)", "ROUTER", "REQUEST ID", "INPUTS", "VERSIONS", "PRIMARY", "SHADOW")]
    for address, e in entries:
        ids = ",".join(e.request_ids) + (" (generated)" if e.request_id_generated else "")
        rows.append(
            (
                _when(e.unix_ms),
                address,
                ids,
                e.input_sha256,
                f"v{e.primary_version} -> v{e.shadow_version}",
                f"{e.primary_latency_s * 1000:.2f} ms",
                f"{e.shadow_latency_s * 1000:.2f} ms",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)) + "  DIFF"]
    for row, (_, e) in zip(rows[1:], entries, strict=True):
        cells = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        lines.append(f"{cells}  {_difference(e)}")
        for side, outputs in (("primary", e.primary_outputs), ("shadow", e.shadow_outputs)):
            lines.extend(f"    {side:<7} {_values(t)}" for t in outputs)
        if e.outputs_truncated:
            lines.append("    (more outputs than an entry keeps: the rest left out)")
    return lines
