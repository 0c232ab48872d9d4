"""py-spy profiles of the suite's hot path under load: the evidence behind hot-path changes.

Starts the suite (as ``modelserve up`` runs it, as ``reference.py`` does) or perfref
(``--target perfref``), drives one model with perf_analyzer at one concurrency and, while the
load is on, records gateway, router and worker with ``py-spy record --format raw`` (collapsed
stacks; ``--native`` adds C frames but pauses the process per sample). For each process it
prints CPU us per request (/proc), the leaf frames with the most samples and the innermost
module of ours per sample, so a change is judged by where the CPU went, not by one noisy
throughput figure. The collapsed files stay in ``--out`` (flamegraph.pl / speedscope).

    .venv/bin/python bench/profile_hotpath.py [--target suite|perfref] [--model tabular]
        [--concurrency 64] [--seconds 10] [--native] [--auth]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(BENCH))

from perf_analyzer import locate, run_point  # noqa: E402
from reference import PERFREF, REFERENCE, cpu_of, push_models, start_reference  # noqa: E402

from modelserve.cli.suite import start_suite, wait_serving  # noqa: E402

PROCESSES = ("gateway", "router", "worker")
# Frames of our code: the suite's packages, or perfref's three scripts.
_OURS = re.compile(r"\((modelserve|gateway|router|worker|common)[/.]")


def summarise(collapsed: Path, top: int) -> str:
    """Leaf-frame and module shares of a py-spy raw (collapsed) profile."""
    leaves: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaves[frames[-1]] += count
        # The innermost frame of our own code says whose work a sample is.
        own = next((f for f in reversed(frames) if _OURS.search(f)), None)
        modules[own.split("(")[-1].split(":")[0] if own else "(no frame of ours)"] += count
    lines = [f"  samples {total}"]
    lines += [f"  {n / total:6.1%}  {f[:150]}" for f, n in leaves.most_common(top)]
    lines.append("  innermost modelserve module per sample:")
    lines += [f"  {n / total:6.1%}  {m}" for m, n in modules.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=("suite", "perfref"), default="suite")
    p.add_argument("--model", default="tabular")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--auth", action="store_true", help="the suite with auth on (infer token)")
    p.add_argument(
        "--native", action="store_true", help="C frames too (py-spy then pauses the process)"
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile"))
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tool = locate()
    if tool.problem or not Path(spy).exists():
        print(f"needs perf_analyzer and py-spy: {tool.problem or 'pip install py-spy'}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="modelserve-profile-"))
    models = work / "models"
    suite = None
    headers: list[str] = []
    try:
        if args.target == "perfref":
            gateway_pid, router_pid, worker_pid = start_reference(models)
            address = REFERENCE
            pids = {"gateway": gateway_pid, "router": router_pid, "worker": worker_pid}
        else:
            subprocess.run(
                [sys.executable, str(PERFREF / "make_models.py")],
                check=True,
                cwd=PERFREF,
                env={**os.environ, "PERFREF_MODELS": str(models)},
                stdout=subprocess.DEVNULL,
            )
            suite = start_suite(work / "suite", workers=1, auth=args.auth)
            for name in ("registry", "featurestore", "worker", "router", "gateway"):
                asyncio.run(wait_serving(suite.address(name), timeout=60))
            asyncio.run(
                push_models(
                    suite.address("registry"),
                    suite.address("gateway"),
                    models,
                    admin_token=suite.token("admin") or "",
                    infer_token=suite.token("infer") or "",
                )
            )
            if args.auth:
                # perf_analyzer also reads ModelStatistics (role read): the admin token has it.
                headers = ["-H", f"authorization: Bearer {suite.token('admin')}"]
            address = suite.address("gateway")
            pids = {name: suite.processes[name].process.pid for name in PROCESSES}
        run_point(
            tool, args.model, address, args.concurrency, 2, work / "w.csv", extra_args=headers
        )
        spies = {
            name: subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--duration",
                    str(int(args.seconds)),
                    *(["--native"] if args.native else ["--nonblocking"]),
                    "-o",
                    str(out / f"{name}.collapsed"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        }
        cpu0, wall0 = {n: cpu_of([p]) for n, p in pids.items()}, time.perf_counter()
        point = run_point(
            tool,
            args.model,
            address,
            args.concurrency,
            args.seconds,
            work / "m.csv",
            extra_args=headers,
        )
        cpu = {n: cpu_of([p]) - cpu0[n] for n, p in pids.items()}
        served = (point.get("infer_per_s") or 0) * (time.perf_counter() - wall0)
        for spy_process in spies.values():
            spy_process.wait(timeout=args.seconds + 60)
    finally:
        if suite is not None:
            suite.stop(timeout=20)
        elif "pids" in locals():
            for pid in pids.values():
                os.kill(pid, 15)
        shutil.rmtree(work, ignore_errors=True)
    rate = point.get("infer_per_s") or 0
    print(f"{args.model} c={args.concurrency}: {rate:.0f} infer/s, load {os.getloadavg()}")
    for name in PROCESSES:
        # perf_analyzer keeps the load on for its whole call: requests ~ rate x wall.
        per_request = cpu[name] / served * 1e6 if served else float("nan")
        print(f"\n== {name}: {cpu[name]:.2f} CPU s, ~{per_request:.0f} us per request")
        collapsed = out / f"{name}.collapsed"
        print(summarise(collapsed, args.top) if collapsed.exists() else "  (no profile)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
