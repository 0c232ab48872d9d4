"""A small read-only web console for a running suite (served by ``modelserve up``).

One page, rendered on the server from the same RPCs the CLI uses, refreshed every few
seconds: the registry's models with their versions, labels and the traffic split in force
(a pending policy and the owner of the traffic too), the canaries with their latest decisions
and numbers, the experiments with their arms over time (counts and means per metric), and the
routers' shadow agreement. ``/api/state`` serves the same data as JSON. Read-only by design:
it offers no button that moves traffic (that stays with the CLI, which the audit log sees).

A thread with its own event loop serves it (stdlib ``http.server``): a page a person looks at
every few seconds needs no web framework, and the suite gains no dependency.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from modelserve.cli import connect
from modelserve.cli.output import as_json
from modelserve.cli.policy import describe
from modelserve.proto.modelserve.v1 import (
    canary_pb2,
    canary_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)

log = logging.getLogger(__name__)
TIMEOUT_S = 3.0
REFRESH_S = 5


@dataclass(frozen=True)
class State:
    models: list[registry_pb2.Model]
    canaries: dict[str, canary_pb2.CanaryStatus]
    experiments: list[tuple[experiments_pb2.Experiment, experiments_pb2.ExperimentReport]]
    shadows: dict[str, list[router_pb2.ShadowPair]]
    errors: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [as_json(m) for m in self.models],
            "canaries": {k: as_json(v) for k, v in self.canaries.items()},
            "experiments": [as_json(r) for _, r in self.experiments],
            "shadows": {k: [as_json(p) for p in v] for k, v in self.shadows.items()},
            "errors": self.errors,
        }


async def read_state(registry: str, routers: Sequence[str], token: str | None = None) -> State:
    errors: list[str] = []
    models: list[registry_pb2.Model] = []
    canaries: dict[str, canary_pb2.CanaryStatus] = {}
    experiments: list[tuple[experiments_pb2.Experiment, experiments_pb2.ExperimentReport]] = []
    shadows: dict[str, list[router_pb2.ShadowPair]] = {}
    async with connect.channel(registry, token=token) as channel:
        reg = registry_pb2_grpc.RegistryStub(channel)
        try:
            listed = await reg.ListModels(registry_pb2.ListModelsRequest(), timeout=TIMEOUT_S)
            models = list(listed.models)
        except grpc.aio.AioRpcError as exc:
            errors.append(f"registry: {exc.code().name}: {exc.details()}")
        canary = canary_pb2_grpc.CanaryStub(channel)
        for model in models:
            try:
                canaries[model.name] = await canary.GetCanary(
                    canary_pb2.GetCanaryRequest(model=model.name, limit=5), timeout=TIMEOUT_S
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: never had one
                    errors.append(f"canary of {model.name}: {exc.code().name}")
        xp = experiments_pb2_grpc.ExperimentsStub(channel)
        try:
            found = await xp.ListExperiments(
                experiments_pb2.ListExperimentsRequest(), timeout=TIMEOUT_S
            )
            for experiment in found.experiments:
                report = await xp.GetReport(
                    experiments_pb2.GetReportRequest(name=experiment.name), timeout=TIMEOUT_S
                )
                experiments.append((experiment, report))
        except grpc.aio.AioRpcError as exc:
            errors.append(f"experiments: {exc.code().name}: {exc.details()}")
    shadowed = [m.name for m in models if m.policy.policy.HasField("shadow")]
    for address in routers:
        async with connect.channel(address, token=token) as channel:
            stub = router_pb2_grpc.RouterControlStub(channel)
            for name in shadowed:
                try:
                    report = await stub.ShadowReport(
                        router_pb2.ShadowReportRequest(model=name), timeout=TIMEOUT_S
                    )
                    shadows.setdefault(name, []).extend(report.pairs)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"router {address} shadow of {name}: {exc.code().name}")
    return State(models, canaries, experiments, shadows, errors)


def render(state: State) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{REFRESH_S}'>",
        "<title>modelserve console</title><style>",
        "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        "th{background:#f3f3f3}.bad{color:#b00}.muted{color:#777}",
        "</style></head><body><h1>modelserve</h1>",
        f"<p class='muted'>read-only; refreshes every {REFRESH_S} s; "
        "<a href='/api/state'>JSON</a></p>",
    ]
    for error in state.errors:
        parts.append(f"<p class='bad'>{e(error)}</p>")
    parts.append("<h2>Models</h2><table id='models'><tr><th>model</th><th>versions</th>")
    parts.append("<th>labels</th><th>traffic</th><th>pending</th><th>owner</th></tr>")
    for m in state.models:
        versions = ", ".join(f"v{v.version}" for v in m.versions)
        labels = ", ".join(f"{k}&rarr;v{v}" for k, v in sorted(m.labels.items()))
        traffic = describe(m.policy.policy) if m.HasField("policy") else "default resolution"
        pending = (
            f"{e(m.pending.state)}: {e(describe(m.pending.policy))} {e(m.pending.reason)}"
            if m.HasField("pending")
            else ""
        )
        unloaded = " <span class='bad'>(unloaded)</span>" if m.unloaded else ""
        parts.append(
            f"<tr><td>{e(m.name)}{unloaded}</td><td>{e(versions)}</td><td>{labels}</td>"
            f"<td>{e(traffic)}</td><td>{pending}</td><td>{e(m.owner)}</td></tr>"
        )
    parts.append("</table><h2>Canaries</h2>")
    if not state.canaries:
        parts.append("<p class='muted'>none</p>")
    for name, c in sorted(state.canaries.items()):
        spec = c.spec
        parts.append(
            f"<h3>{e(name)}: v{spec.baseline} &rarr; v{spec.candidate}, {e(c.state)}, "
            f"step {c.step_index + 1}/{len(spec.steps)}</h3><table><tr><th>action</th>"
            "<th>%</th><th>baseline calls/errors/p99</th><th>candidate calls/errors/p99</th>"
            "<th>reason</th></tr>"
        )
        for d in c.decisions:
            b, k = d.baseline, d.candidate
            parts.append(
                f"<tr><td>{e(d.action)}</td><td>{d.percent:g}</td>"
                f"<td>{b.requests}/{b.errors}/{b.p99_s * 1000:.1f} ms</td>"
                f"<td>{k.requests}/{k.errors}/{k.p99_s * 1000:.1f} ms</td>"
                f"<td>{e(d.reason)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Experiments</h2>")
    if not state.experiments:
        parts.append("<p class='muted'>none</p>")
    for experiment, report in state.experiments:
        arms = ", ".join(f"{a.name}={a.version or a.label}:{a.percent:g}%" for a in experiment.arms)
        status = experiments_pb2.Experiment.State.Name(experiment.state).lower()
        parts.append(
            f"<h3>{e(experiment.name)} on {e(experiment.model)}: {e(status)} ({e(arms)})</h3>"
            "<table><tr><th>metric</th><th>arm</th><th>count</th><th>mean</th>"
            "<th>diff vs control</th><th>p (always valid)</th></tr>"
        )
        for row in report.metrics:
            diff = "control" if row.is_control else f"{row.difference:+.4g}"
            p = "" if row.is_control else f"{row.p_value:.3g}"
            parts.append(
                f"<tr><td>{e(row.metric)}</td><td>{e(row.arm)}</td><td>{row.count}</td>"
                f"<td>{row.mean:.4g}</td><td>{diff}</td><td>{p}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Shadow agreement</h2>")
    if not state.shadows:
        parts.append("<p class='muted'>no model mirrors traffic</p>")
    for name, pairs in sorted(state.shadows.items()):
        parts.append(
            f"<h3>{e(name)}</h3><table><tr><th>primary</th><th>shadow</th><th>pairs</th>"
            "<th>agreement</th><th>errors</th><th>timeouts</th></tr>"
        )
        for pair in pairs:
            rate = f"{pair.agreements / pair.pairs:.1%}" if pair.pairs else "-"
            parts.append(
                f"<tr><td>v{pair.primary_version}</td><td>v{pair.shadow_version}</td>"
                f"<td>{pair.pairs}</td><td>{rate}</td><td>{pair.shadow_errors}</td>"
                f"<td>{pair.shadow_timeouts}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


class Console:
    """The console's HTTP server on its own thread; ``stop`` ends it."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: str,
        routers: Sequence[str],
        token: str | None = None,
    ) -> None:
        console = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in ("/", "/api/state"):
                    self.send_error(404, "the console has / and /api/state")
                    return
                try:
                    state = asyncio.run(
                        read_state(console.registry, console.routers, console.token)
                    )
                except Exception as exc:  # the page says what failed, never a traceback
                    log.warning("console: reading the suite failed: %s", exc)
                    state = State([], {}, [], {}, [f"reading the suite failed: {exc}"])
                if self.path == "/api/state":
                    body = json.dumps(state.to_json(), indent=2).encode()
                    kind = "application/json"
                else:
                    body, kind = render(state).encode(), "text/html; charset=utf-8"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a refreshing page would flood the suite's output

        self.registry = registry
        self.routers = list(routers)
        self.token = token  # a read (or admin) token when the suite runs with auth
        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="console", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
