"""Streaming benchmark: events/s end to end through `modelserve stream run` against the
gateway's online throughput at the same concurrency, drain time of a burst with 1 and 2
consumers, and consumer lag over time (an SVG plot in the report).

    .venv/bin/python bench/stream_bench.py                       # the full run (~5 min)
    .venv/bin/python bench/stream_bench.py --burst 20000 --window 5   # shorter

Brokers: a Redis of its own on a free port (no persistence); the suite is started as by
`modelserve up` with the demo models. Each streamer keeps at most `--in-flight` batches out,
so it issues up to batch x in-flight concurrent ModelInfer calls; the online figure is our
load generator (bench/loadgen.py) at that many concurrent callers, in the same sitting.
The report goes to bench/results/stream-<time>.md (+ .json, + lag .svg).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import probes  # noqa: E402
import run as benchrun  # noqa: E402

from modelserve.cli.suite import start_suite, wait_serving  # noqa: E402
from modelserve.cli.up import prepare  # noqa: E402

CLI = Path(sys.executable).parent / "modelserve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis did not start")


def fill(client: redis.Redis, stream: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((256, 32)).astype(np.float32).tolist()
    for start in range(0, n, 2000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 2000, n)):
            body = {"id": f"e{i}", "key": f"user-{i % 1000}", "inputs": {"INPUT0": [rows[i % 256]]}}
            pipe.xadd(stream, {"data": json.dumps(body)})
        pipe.execute()


def spawn(
    gateway: str,
    base: str,
    source: str,
    sink: str,
    group: str,
    name: str,
    batch: int,
    in_flight: int,
    work: Path,
) -> tuple[subprocess.Popen[bytes], int]:
    port_file = work / f"{name}.port.json"
    argv = [
        str(CLI),
        "stream",
        "run",
        "tabular",
        "--source",
        f"{base}?stream={source}",
        "--sink",
        f"{base}?stream={sink}",
        "--group",
        group,
        "--consumer",
        name,
        "--gateway",
        gateway,
        "--max-batch",
        str(batch),
        "--max-in-flight",
        str(in_flight),
        "--port-file",
        str(port_file),
        "--drain-seconds",
        "0",
        "--metrics-port",
        "-2",
        "--log-level",
        "WARNING",
    ]
    log = (work / f"{name}.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"streamer {name} exited; see {work / (name + '.log')}")
        time.sleep(0.02)
    return proc, int(json.loads(port_file.read_text())["port"])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def lag_of(client: redis.Redis, stream: str, group: str) -> int:
    for g in client.xinfo_groups(stream):
        if g["name"].decode() == group:
            return int(g["pending"]) + int(g["lag"] or 0)
    return client.xlen(stream)


def stream_rate(
    client: redis.Redis,
    base: str,
    gateway: str,
    batch: int,
    in_flight: int,
    window: float,
    work: Path,
    tag: str,
) -> dict[str, Any]:
    """Steady-state results/s of one consumer on a stream filled well beyond the window."""
    source, sink = f"src-{tag}", f"out-{tag}"
    fill(client, source, int(6000 * window) if batch > 1 else int(1500 * window))
    proc, port = spawn(gateway, base, source, sink, "g", f"rate-{tag}", batch, in_flight, work)
    try:
        asyncio.run(wait_serving(f"127.0.0.1:{port}", timeout=60))
        time.sleep(2.0)  # warm: the first batches, channels, the gateway's lanes
        n0, t0 = client.xlen(sink), time.perf_counter()
        time.sleep(window)
        n1, t1 = client.xlen(sink), time.perf_counter()
    finally:
        stop(proc)
    left = client.xlen(source) - client.xlen(sink)
    return {
        "batch": batch,
        "in_flight": in_flight,
        "events_per_s": (n1 - n0) / (t1 - t0),
        "results_in_window": n1 - n0,
        "unscored_at_end": left,
    }


def online_rate(gateway: str, concurrency: int, window: float) -> dict[str, Any]:
    spec = benchrun.model_spec("tabular")
    gens = benchrun._spawn_generators(gateway, spec, concurrency, 1 if concurrency < 64 else 2)
    t0 = time.time() + 1.0
    t1 = t0 + window
    for gen in gens:
        assert gen.stdin is not None
        gen.stdin.write(f"{t0} {t1}\n")
        gen.stdin.flush()
    done, errors = 0, 0
    # Read every generator at once: one left waiting on a full pipe loses its report.
    with ThreadPoolExecutor(len(gens)) as pool:
        outs = list(pool.map(lambda g: g.communicate(timeout=window + 120)[0], gens))
    for out in outs:
        result = json.loads(out.strip().splitlines()[-1])
        done += len(result["latencies_us"])
        errors += sum(result["errors"].values())
    return {"concurrency": concurrency, "infer_per_s": done / window, "errors": errors}


def drain(
    client: redis.Redis,
    base: str,
    gateway: str,
    consumers: int,
    burst: int,
    batch: int,
    in_flight: int,
    work: Path,
) -> dict[str, Any]:
    source, sink = f"burst{consumers}", f"burst{consumers}-out"
    fill(client, source, burst, seed=consumers)
    client.xgroup_create(source, "g", id="0")
    procs = [
        spawn(gateway, base, source, sink, "g", f"drain{consumers}-{i}", batch, in_flight, work)
        for i in range(consumers)
    ]
    try:
        for _, port in procs:
            asyncio.run(wait_serving(f"127.0.0.1:{port}", timeout=60))
        t0 = time.perf_counter()
        series: list[tuple[float, int]] = []
        while True:
            lag = lag_of(client, source, "g")
            series.append((time.perf_counter() - t0, lag))
            if lag == 0:
                break
            time.sleep(0.25)
        seconds = time.perf_counter() - t0
    finally:
        for proc, _ in procs:
            stop(proc)
    return {
        "consumers": consumers,
        "burst": burst,
        "batch": batch,
        "in_flight": in_flight,
        "seconds": seconds,
        "events_per_s": burst / seconds,
        "results": client.xlen(sink),
        "lag": series,
    }


def svg(runs: list[dict[str, Any]]) -> str:
    w, h, pad = 640, 320, 50
    tmax = max(r["lag"][-1][0] for r in runs) or 1
    lmax = max(max(lag for _, lag in r["lag"]) for r in runs) or 1
    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="10" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">seconds since the consumers '
        "were ready</text>",
        f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" '
        'text-anchor="middle">consumer lag (events)</text>',
        f'<text x="{pad - 4}" y="14" text-anchor="end">{lmax}</text>',
        f'<text x="{pad - 4}" y="{h - pad}" text-anchor="end">0</text>',
        f'<text x="{w - 10}" y="{h - pad + 14}" text-anchor="end">{tmax:.1f}</text>',
    ]
    for i, r in enumerate(runs):
        pts = " ".join(
            f"{pad + t / tmax * (w - pad - 10):.1f},{h - pad - lag / lmax * (h - pad - 10):.1f}"
            for t, lag in r["lag"]
        )
        c = colors[i % len(colors)]
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
        parts.append(
            f'<text x="{w - 180}" y="{24 + 14 * i}" fill="{c}">{r["consumers"]} '
            f"consumer(s): {r['seconds']:.1f} s</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def markdown(doc: dict[str, Any], svg_name: str) -> str:
    m = doc["machine"]
    lines = [
        f"# Streaming bench, {m['time_utc']}",
        "",
        f"{m['nproc']} cores, load average at start {m['loadavg_start']}, at end "
        f"{doc['loadavg_end']}. Command: `{doc['command']}`",
        "",
        "| batch | in flight | streamed events/s | online infer/s, same concurrency | ratio |",
        "|---|---|---|---|---|",
    ]
    for s, o in zip(doc["rates"], doc["online"], strict=True):
        ratio = s["events_per_s"] / o["infer_per_s"] if o["infer_per_s"] else 0
        lines.append(
            f"| {s['batch']} | {s['in_flight']} | {s['events_per_s']:.0f} | "
            f"{o['infer_per_s']:.0f} (c={o['concurrency']}, {o['errors']} errors) | {ratio:.2f} |"
        )
    lines += [
        "",
        "| burst drained | consumers | batch x in flight | seconds | events/s | results |",
        "|---|---|---|---|---|---|",
    ]
    for d in doc["drains"]:
        lines.append(
            f"| {d['burst']} | {d['consumers']} | {d['batch']} x {d['in_flight']} | "
            f"{d['seconds']:.1f} | {d['events_per_s']:.0f} | {d['results']} |"
        )
    lines += ["", f"Consumer lag over time: ![lag]({svg_name})", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--in-flight", type=int, default=2)
    p.add_argument("--window", type=float, default=8.0, help="seconds measured per rate point")
    p.add_argument("--burst", type=int, default=100_000)
    p.add_argument("--drain-batch", type=int, default=32)
    p.add_argument("--drain-in-flight", type=int, default=4)
    p.add_argument("--out", type=Path, default=BENCH / "results")
    args = p.parse_args()
    machine = probes.machine_facts()
    work = Path(tempfile.mkdtemp(prefix="modelserve-stream-bench-"))
    redis_proc, base = start_redis(work)
    client = redis.Redis.from_url(base)
    suite = start_suite(work / "suite")
    doc: dict[str, Any] = {
        "machine": machine,
        "command": " ".join(["bench/stream_bench.py", *sys.argv[1:]]),
    }
    try:
        asyncio.run(prepare(suite, demo=True))
        gateway = suite.address("gateway")
        batches = [int(b) for b in args.batches.split(",")]
        doc["rates"], doc["online"] = [], []
        for b in batches:
            s = stream_rate(client, base, gateway, b, args.in_flight, args.window, work, f"b{b}")
            print(f"stream batch {b}: {s['events_per_s']:.0f} events/s", flush=True)
            o = online_rate(gateway, min(b * args.in_flight, 1024), args.window)
            print(f"online c={o['concurrency']}: {o['infer_per_s']:.0f} infer/s", flush=True)
            doc["rates"].append(s)
            doc["online"].append(o)
        doc["drains"] = []
        for consumers in (1, 2):
            d = drain(
                client,
                base,
                gateway,
                consumers,
                args.burst,
                args.drain_batch,
                args.drain_in_flight,
                work,
            )
            print(f"drain {args.burst} with {consumers}: {d['seconds']:.1f}s", flush=True)
            doc["drains"].append(d)
        doc["loadavg_end"] = list(os.getloadavg())
    finally:
        suite.stop()
        redis_proc.terminate()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    svg_name = f"stream-{stamp}-lag.svg"
    (args.out / svg_name).write_text(svg(doc["drains"]))
    (args.out / f"stream-{stamp}.json").write_text(json.dumps(doc, indent=1))
    text = markdown(doc, svg_name)
    (args.out / f"stream-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
