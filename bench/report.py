"""The benchmark report: one JSON document (everything measured) and its markdown rendering."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

SCHEMA = 1
# Issue 3, item 7: (concurrency, figure, comparison, bound) per reference model.
TARGETS: dict[str, list[tuple[int, str, str, float]]] = {
    "tabular": [(1, "p50_ms", "<=", 1.2), (64, "infer_per_s", ">=", 6000.0)],
    "wide": [(1, "p50_ms", "<=", 2.0), (64, "infer_per_s", ">=", 4000.0)],
}
SERVICES = ("gateway", "router", "worker")


# --- the document --------------------------------------------------------------------------


def _headline(points: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    """The point that stands for a concurrency: the best throughput among generator layouts."""
    at = [p for p in points if p["concurrency"] == concurrency]
    return max(at, key=lambda p: p["infer_per_s"]) if at else None


def _targets(model: str, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for concurrency, figure, op, bound in TARGETS.get(model, []):
        point = _headline(points, concurrency)
        value = point[figure] if point else None
        passed = None if value is None else (value <= bound if op == "<=" else value >= bound)
        unit = "ms" if figure.endswith("_ms") else "infer/s"
        name = "p50" if figure == "p50_ms" else "throughput"
        out.append(
            {
                "target": f"c={concurrency} {name} {op} {bound:g} {unit}",
                "concurrency": concurrency,
                "figure": figure,
                "bound": bound,
                "value": value,
                "pass": passed,
            }
        )
    return out


def build(
    machine: dict[str, Any],
    config: dict[str, Any],
    results: dict[str, Any],
    floor: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    models = {}
    for name, r in results.items():
        ort = r["ort"]
        b1, best = ort["batch1"], ort["best"]
        points = []
        for p in r.get("points", []):
            points.append(
                {
                    **p,
                    "ratio_to_ort_batch1": p["infer_per_s"] / b1["infer_per_s"],
                    "ratio_to_ort_best": p["infer_per_s"] / best["rows_per_s"],
                    "p50_over_ort_ms": p["p50_ms"] - b1["p50_ms"],
                }
            )
        pa = r.get("perf_analyzer", {"status": "off", "reason": "not run", "points": []})
        for p in pa["points"]:
            if p.get("status") == "ok":
                p["ratio_to_ort_batch1"] = p["infer_per_s"] / b1["infer_per_s"]
                p["ratio_to_ort_best"] = p["infer_per_s"] / best["rows_per_s"]
        models[name] = {
            "input": r["input"],
            "row_shape": r["row_shape"],
            "ort": ort,
            "points": points,
            "perf_analyzer": pa,
            "targets": _targets(name, points),
        }
        models[name]["observations"] = observations(models[name])
    return {
        "schema": SCHEMA,
        "machine": machine,
        "config": config,
        "models": models,
        "transport_floor": floor or [],
    }


def write(doc: dict[str, Any], out: Path) -> dict[str, Any]:
    """bench-<time>.json/.md in ``out``, copied to latest.json/.md."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = markdown(doc)
    json_path, md_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.md"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path.write_text(text)
    shutil.copyfile(json_path, out / "latest.json")
    shutil.copyfile(md_path, out / "latest.md")
    return {"json": json_path, "md": md_path, "markdown_text": text}


# --- rendering -----------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    """A ratio as a percentage with two significant digits (0.0024 -> 0.24%)."""
    if value is None:
        return "-"
    return f"{value * 100:.2g}%" if value < 1 else f"{value * 100:.0f}%"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _header(doc: dict[str, Any]) -> list[str]:
    m, c = doc["machine"], doc["config"]
    v = m["versions"]
    load0 = " / ".join(f"{x:.2f}" for x in m["loadavg_start"])
    load1 = " / ".join(f"{x:.2f}" for x in m.get("loadavg_end", m["loadavg_start"]))
    dirty = (
        f" + uncommitted changes (services diff sha256 {m.get('git_diff_sha256', '?')})"
        if m["git_dirty"]
        else ""
    )
    return [
        f"# modelserve benchmark, {m['time_utc']}",
        "",
        f"- **Machine**: {m['nproc']} cores usable ({m['cpu_model']}), {m['mem_gib']} GiB, "
        f"Linux {m['kernel']}. The suite, the load generator, perf_analyzer and anything "
        f"else running share these cores: {_n(m['nproc'] * 1e6)} CPU µs per second in all, so "
        "a request costing X CPU µs end to end caps throughput near that figure / X.",
        f"- **Load average** (1/5/15 min): {load0} at start, {load1} at end.",
        f"- **Versions**: Python {m['python']}, "
        + ", ".join(f"{k} {val}" for k, val in v.items() if val)
        + f"; commit {m['git_commit'] or '?'}{dirty}.",
        f"- **Run**: `{c['command']}`: {c['seconds']:g} s measured per point after "
        f"{c['warmup']:g} s warmup, {c['repeat']} run(s) per point (medians), client processes "
        f"{c['client_procs']}, gateway args `{c['gateway_args'] or '(none)'}`, worker args "
        f"`{c['worker_args'] or '(none)'}`.",
        "- **Our client**: `bench/loadgen.py`, uvloop, C tasks looping ModelInfer on one shared "
        "channel per process, batch 1, request pre-serialized; latency from perf_counter per "
        "request. **Limit**: the same ONNX model in ONNX Runtime in-process "
        "(intra_op_num_threads=2, CPU EP), batch 1 and the best batch of 1..64.",
        "",
    ]


def _targets_table(doc: dict[str, Any]) -> list[str]:
    lines = ["## Targets", "", "| model | target | measured | result |", "|---|---|---|---|"]
    for name, m in doc["models"].items():
        for t in m["targets"]:
            unit = " ms" if t["figure"].endswith("_ms") else " infer/s"
            value = (
                "not measured"
                if t["value"] is None
                else (_ms(t["value"]) if unit == " ms" else _n(t["value"])) + unit
            )
            result = {True: "PASS", False: "FAIL", None: "not measured"}[t["pass"]]
            lines.append(f"| {name} | {t['target']} | {value} | {result} |")
    return [*lines, ""]


def observations(m: dict[str, Any]) -> list[str]:
    """Plain facts read off the figures, so a reader does not miss them."""
    notes = []
    points = m["points"]
    unmerged = [
        p["concurrency"]
        for p in points
        if p["concurrency"] >= 4
        and p["server"].get("requests_per_worker_call") is not None
        and p["server"]["requests_per_worker_call"] < 1.05
    ]
    if unmerged:
        notes.append(
            "The worker received one call per client request at c="
            + ", ".join(map(str, unmerged))
            + ": nothing was merged before the worker (gateway merging off or not effective)."
        )
    busy = [p["concurrency"] for p in points if (p["machine_busy"] or 0) >= 0.95]
    if busy:
        notes.append(
            f"All cores were busy at c={', '.join(map(str, busy))}: throughput there is bound "
            "by CPU per request (and by whatever else ran on the machine)."
        )
    pa = {p["concurrency"]: p for p in m["perf_analyzer"]["points"] if p.get("status") == "ok"}
    for p in points:
        ours = p["server"].get("requests_per_worker_call")
        theirs = pa.get(p["concurrency"], {}).get("server", {}).get("requests_per_worker_call")
        if ours and theirs and p["concurrency"] >= 4 and theirs < 1.05 <= ours:
            notes.append(
                f"At c={p['concurrency']} the gateway merged our client's requests "
                f"({ours:.2f} per worker call) but not perf_analyzer's ({theirs:.2f}): "
                "perf_analyzer 2.41 sends the request parameter "
                "triton_enable_empty_final_response, and the gateway's merger sends any request "
                "that has parameters alone."
            )
            break
    hot = [p["concurrency"] for p in points if p["client_cpu_cores"] >= 0.85]
    if hot:
        notes.append(f"A generator process used >= 85% of a core at c={hot}.")
    return notes


def _model_section(name: str, m: dict[str, Any]) -> list[str]:
    ort = m["ort"]
    b1, best = ort["batch1"], ort["best"]
    batches = ", ".join(f"{b['batch']}: {_n(b['rows_per_s'])}" for b in ort["batches"])
    lines = [
        f"## {name} ({m['input']} FP32 [1, {', '.join(map(str, m['row_shape']))}] per request)",
        "",
        f"ONNX Runtime in-process: batch 1 p50 {b1['p50_ms']:.3f} ms, p99 {b1['p99_ms']:.3f} ms, "
        f"{_n(b1['infer_per_s'])} infer/s (1 / p50; mean-based {_n(b1.get('infer_per_s_mean'))}); "
        f"best batch {best['batch']}: "
        f"{_n(best['rows_per_s'])} rows/s (rows/s by batch: {batches}).",
        "",
    ]
    pa = m["perf_analyzer"]
    pa_by_c = {p["concurrency"]: p for p in pa["points"] if p.get("status") == "ok"}
    lines += [
        "| c | client procs | req/s | p50 ms | p99 ms | % of ORT b1 | % of ORT best "
        "| p50 minus ORT b1 ms | perf_analyzer req/s | PA p50 ms | PA p99 ms | PA % of ORT b1 "
        "| errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in m["points"]:
        q = pa_by_c.get(p["concurrency"], {})
        errors = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "0"
        lines.append(
            f"| {p['concurrency']} | {p['client_procs']} | {_n(p['infer_per_s'])} "
            f"| {_ms(p['p50_ms'])} | {_ms(p['p99_ms'])} | {_x(p['ratio_to_ort_batch1'])} "
            f"| {_x(p['ratio_to_ort_best'])} | {_ms(p['p50_over_ort_ms'])} "
            f"| {_n(q.get('infer_per_s'))} | {_ms(q.get('p50_ms'))} | {_ms(q.get('p99_ms'))} "
            f"| {_x(q.get('ratio_to_ort_batch1'))} | {errors} |"
        )
    lines += [
        "",
        "% of ORT b1: our req/s ÷ ONNX Runtime's batch-1 infer/s in-process; % of ORT best: our "
        "req/s ÷ its best-batch rows/s. PA: perf_analyzer at the same concurrency, batch 1.",
    ]
    if any(p.get("runs", 1) > 1 for p in m["points"]):
        runs = "; ".join(
            f"c={p['concurrency']}: "
            + ", ".join(_n(x) for x in p.get("runs_infer_per_s", [p["infer_per_s"]]))
            for p in m["points"]
        )
        lines += ["", f"Every run's req/s (the table shows medians): {runs}."]
    lines += [
        "",
        "Where it goes (server ModelStatistics through the gateway; CPU time and context "
        "switches of each process from /proc, per client request; worker queue/infer are its "
        "per-request averages):",
        "",
        "| c | avg batch (rows/execution) | client requests/worker call | worker queue µs "
        "| worker infer µs | client CPU µs | gateway CPU µs | router CPU µs | worker CPU µs "
        "| suite CPU µs (sys) | suite ctx switches | machine busy | PA requests/worker call "
        "| PA avg batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in m["points"]:
        s, cpu = p["server"], p["cpu"]
        pa_server = pa_by_c.get(p["concurrency"], {}).get("server", {})
        suite = [cpu[n] for n in SERVICES if n in cpu]
        total = sum(c["us_per_request"] or 0 for c in suite)
        sys_us = sum((c["us_per_request"] or 0) * (c["sys_share"] or 0) for c in suite)
        switches = sum(c["switches_per_request"] or 0 for c in suite)
        client = p["client_cpu_cores"] * 1e6 / p["infer_per_s"] if p["infer_per_s"] else None
        lines.append(
            f"| {p['concurrency']} | {_n(s.get('avg_batch'), 2)} "
            f"| {_n(s.get('requests_per_worker_call'), 2)} | {_n(s.get('queue_us'))} "
            f"| {_n(s.get('infer_us'))} | {_n(client)} "
            + " ".join(f"| {_n(cpu.get(n, {}).get('us_per_request'))}" for n in SERVICES)
            + f" | {_n(total)} ({_pct(sys_us / total if total else None)}) | {_n(switches)} "
            f"| {_pct(p['machine_busy'])} | {_n(pa_server.get('requests_per_worker_call'), 2)} "
            f"| {_n(pa_server.get('avg_batch'), 2)} |"
        )
    lines += [
        "",
        "CPU µs are CPU time per completed client request (user + system; sys = the system "
        "share); the suite is gateway + router + worker. Machine busy is the share of all "
        "cores in use during the window, whoever used them.",
        "",
        *(f"- {note}" for note in m.get("observations", [])),
        *([""] if m.get("observations") else []),
        f"perf_analyzer: **{pa['status']}**" + (f": {pa['reason']}" if pa.get("reason") else ""),
    ]
    if pa_by_c:
        cpu = ", ".join(
            f"c={c}: {_n(q['client_cpu_cores'] * 1e6 / q['infer_per_s'])}"
            for c, q in pa_by_c.items()
            if q.get("client_cpu_cores") is not None and q["infer_per_s"]
        )
        if cpu:
            lines[-1] += f" (its own CPU per request, µs: {cpu})"
    if pa["points"]:
        lines.append("")
        lines.append(f"Command (per c): `{pa['points'][0].get('command', '')}`")
    return [*lines, ""]


def _floor_section(doc: dict[str, Any]) -> list[str]:
    floor = doc.get("transport_floor") or []
    if not floor:
        return []
    lines = [
        "## Transport floor: one do-nothing grpc.aio server",
        "",
        "`bench/echo_server.py` (grpc.aio + uvloop, ModelInfer returns a fixed reply, bytes in "
        "and out) driven by the same client: what one Python gRPC process costs per request "
        "here before any modelserve code runs. The suite has three such processes in line.",
        "",
        "| c | req/s | p50 ms | p99 ms | server CPU µs/req | client CPU µs/req "
        "| server ctx switches/req | machine busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in floor:
        echo = p["cpu"].get("echo", {})
        client = p["client_cpu_cores"] * 1e6 / p["infer_per_s"] if p["infer_per_s"] else None
        lines.append(
            f"| {p['concurrency']} | {_n(p['infer_per_s'])} | {_ms(p['p50_ms'])} "
            f"| {_ms(p['p99_ms'])} | {_n(echo.get('us_per_request'))} | {_n(client)} "
            f"| {_n(echo.get('switches_per_request'), 1)} | {_pct(p['machine_busy'])} |"
        )
    return [*lines, ""]


def markdown(doc: dict[str, Any]) -> str:
    lines = _header(doc) + _targets_table(doc)
    for name, m in doc["models"].items():
        lines += _model_section(name, m)
    lines += _floor_section(doc)
    return "\n".join(lines)


# --- progress lines ------------------------------------------------------------------------


def point_line(model: str, p: dict[str, Any]) -> str:
    return (
        f"  {model} c={p['concurrency']} procs={p['client_procs']}: "
        f"{p['infer_per_s']:,.0f} req/s, p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, "
        f"client CPU {p['client_cpu_cores'] * 100:.0f}%, errors {sum(p['errors'].values())}"
    )


def pa_line(model: str, p: dict[str, Any]) -> str:
    if p.get("status") != "ok":
        return f"  perf_analyzer {model} c={p['concurrency']}: {p.get('reason')}"
    return (
        f"  perf_analyzer {model} c={p['concurrency']}: {p['infer_per_s']:,.0f} infer/s, "
        f"p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms"
    )


def ort_line(model: str, limit: dict[str, Any]) -> str:
    b1, best = limit["batch1"], limit["best"]
    return (
        f"  ORT in-process {model}: batch 1 {b1['infer_per_s']:,.0f} infer/s "
        f"(p50 {b1['p50_ms']:.3f} ms); best batch {best['batch']}: "
        f"{best['rows_per_s']:,.0f} rows/s"
    )
