"""Batch inference throughput: the local and Spark engines against their anchors, one sitting.

    .venv/bin/python bench/batch_bench.py                       # 1M rows of tabular and wide
    .venv/bin/python bench/batch_bench.py --rows 1000000 --wide-rows 200000
    .venv/bin/python bench/batch_bench.py --models tabular --repeat 3 --publish-keys 0
    .venv/bin/python bench/batch_bench.py --models tabular --tabular-layout list  # the old data

Data (generated, row groups of 65,536): `wide` as one fixed-size list column of 512 floats;
`tabular` by default as 32 scalar float32 columns (``--tabular-layout scalar``: the common
lake layout, mapped to INPUT0 [-1, 32] by the default column rule), encoded PLAIN as Spark
writes them (parquet-mr keeps a dictionary only where it is smaller than the values; pyarrow
would dictionary-encode 65,536 unique floats per row group), or ``--tabular-layout list``:
one fixed-size list column, pyarrow's default encoding (the layout of earlier sittings).

Prints a markdown table (and writes it to --out, default bench/results/batch-latest.md):
- raw ORT: ONNX Runtime in one process on in-memory rows, at its best batch of a few sizes
  (probed for 0.5 s each, the best timed for 3 s or a pass over --raw-rows), intra-op
  threads = cores (the ceiling of any engine here);
- local: ``modelserve batch run --engine local`` as a subprocess (Parquet read and written,
  artifact fetched from a real registry), rows / the run's own seconds;
- spark: ``--engine spark`` on a SparkSession local[N] (JVM started and Python workers warmed
  on a small file before timing; the same for predict_batch_udf);
- predict_batch_udf: ``pyspark.ml.functions.predict_batch_udf`` with the same ONNX file, on
  ``spark.read.parquet`` of the same data, written with ``.write.parquet`` (what a Spark user
  writes by hand), batch_size 4096, one ORT thread per task;
- peak memory of the local engine at two row counts (the process's high-water mark, VmHWM);
- publishing N keys through a featurestore on Redis: keys/s and Redis memory per key.
Numbers from a shared machine: the load average at both ends is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
ENGINE_ARGS: list[str] = []  # extra `batch run` flags for the local engine (--batch-rows)
sys.path.insert(0, str(ROOT / "services"))

from modelserve.cli import demo_models  # noqa: E402
from modelserve.cli.registry_client import push_version  # noqa: E402
from modelserve.cli.suite import wait_serving  # noqa: E402

CLI = Path(sys.executable).parent / "modelserve"
WIDTH = {"tabular": 32, "wide": 512}
CHUNK = 65_536
UDF_BATCH = 4096
RAW_PROBE = 0.5
RAW_SECONDS = 3.0
GOALS = {  # issue 15, on this box
    ("tabular", "local/raw"): 0.3,
    ("wide", "local/raw"): 0.8,
    ("tabular", "spark/udf"): 2.0,
    ("wide", "spark/udf"): 1.0,
}


def start(
    service: str, work: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port_file = work / f"{service}.port.json"
    port_file.unlink(missing_ok=True)  # a --workdir reused: not the last run's port
    log = (work / f"{service}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", service, "--port", "0", "--port-file", str(port_file),
         "--data-dir", str(work / service), *args],
        stdout=log, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, **(env or {})},
    )  # fmt: skip
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{service} exited; see {work / service}.log")
        time.sleep(0.05)
    address = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    asyncio.run(wait_serving(address, timeout=60))
    return proc, address


async def push_models(registry: str, work: Path) -> dict[str, Path]:
    import grpc

    from modelserve.proto.modelserve.v1 import registry_pb2_grpc

    paths = {}
    async with grpc.aio.insecure_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        for name in WIDTH:
            path = work / f"{name}.onnx"
            onnx.save(demo_models.build(name), path)
            await push_version(stub, name, path)
            paths[name] = path
    return paths


def write_data(path: Path, width: int, rows: int, seed: int, layout: str = "list") -> None:
    """id + the features, written a chunk at a time (row groups of CHUNK). ``list``: INPUT0
    as fixed-size lists (pyarrow's default encoding); ``scalar``: ``width`` float32 columns
    f000.., PLAIN-encoded as Spark's parquet-mr writes unique values (its dictionary falls
    back to PLAIN on the first page when it saves nothing)."""
    rng = np.random.default_rng(seed)
    if layout == "list":
        fields = [("id", pa.int64()), ("INPUT0", pa.list_(pa.float32(), width))]
    else:
        fields = [("id", pa.int64()), *((f"f{j:03d}", pa.float32()) for j in range(width))]
    schema = pa.schema(fields)
    with pq.ParquetWriter(path, schema, use_dictionary=layout == "list") as writer:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            x = rng.standard_normal((n, width), dtype=np.float32)
            ids = pa.array(np.arange(start, start + n))
            if layout == "list":
                cols = [ids, pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width)]
            else:
                cols = [ids, *(pa.array(x[:, j]) for j in range(width))]
            writer.write_batch(pa.record_batch(cols, schema=schema))


def features(table: pa.Table) -> list[str]:
    """The feature columns of bench data: INPUT0, or the scalar columns after the id."""
    return ["INPUT0"] if "INPUT0" in table.schema.names else table.schema.names[1:]


def raw_ort(model: Path, data: Path, rows: int) -> tuple[float, int]:
    """Rows/s at the best batch, rows already in memory, one process, intra-op = all cores.

    Each batch size is probed for RAW_PROBE seconds (cycling over the rows); the best one is
    then timed for RAW_SECONDS or a pass over the rows, whichever is longer. A probe alone
    would be a lucky second on a shared box (the engines run for seconds to a minute)."""
    table = pq.read_table(data).slice(0, rows)
    if features(table) == ["INPUT0"]:
        width = table.schema.field("INPUT0").type.list_size
        x = np.asarray(table.column("INPUT0").combine_chunks().flatten()).reshape(-1, width)
    else:
        x = np.column_stack([table.column(c).to_numpy() for c in features(table)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])

    def rate(batch: int, seconds: float, rows: int = 0) -> float:
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds or done < rows:
            i = done % len(x)
            chunk = x[i : i + batch]
            session.run(None, {"INPUT0": chunk})
            done += len(chunk)
        return done / elapsed

    probes = []
    for batch in (256, 1024, 4096, 16384, 65536):
        session.run(None, {"INPUT0": x[:batch]})
        probes.append((rate(batch, RAW_PROBE), batch))
    best = max(probes)[1]
    return rate(best, RAW_SECONDS, len(x)), best


def local_engine(
    model: str, data: Path, out: Path, registry: str, cache: Path
) -> tuple[dict[str, Any], int]:
    """The CLI's summary and its peak RSS. For numeric models the engine is one process (its
    executors are threads), so the kernel's high-water mark of that process (VmHWM, read a
    few times a second: one small file, not a scan of /proc that steals CPU from the run
    being timed) is its peak. Not wait4's ru_maxrss: that counts this (large) process's RSS
    at the fork too."""
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            [str(CLI), "batch", "run", model, "--input", str(data), "--output", str(out),
             "--key-column", "id", "--registry", registry, "--cache-dir", str(cache), "--json",
             "--no-progress", *ENGINE_ARGS],
            stdout=stdout, stderr=stderr, text=True,
        )  # fmt: skip
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _hwm(proc.pid))
            time.sleep(0.05)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode:
            raise RuntimeError(f"local engine failed: {stderr.read()}")
        return json.loads(stdout.read()), peak


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def spark_engine(
    model: str, data: Path, out: Path, registry: str, cache: Path, master: str
) -> dict[str, Any]:
    from modelserve.cli.batch.job import RunOptions, run_batch

    return run_batch(
        RunOptions(model=model, input=str(data), output=str(out), engine="spark", master=master,
                   key_columns=["id"], registry=registry, cache_dir=str(cache), progress=False)
    )  # fmt: skip


def make_udf(model_path: Path, width: int, outputs: int) -> Any:
    from pyspark.ml.functions import predict_batch_udf as pbu
    from pyspark.sql.types import ArrayType, FloatType

    path = str(model_path)

    def make_predict_fn():  # type: ignore[no-untyped-def]
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def predict(x: np.ndarray) -> np.ndarray:
            y = session.run(None, {"INPUT0": x.astype(np.float32, copy=False)})[0]
            return y[:, 0] if outputs == 1 else y

        return predict

    return pbu(
        make_predict_fn,
        return_type=FloatType() if outputs == 1 else ArrayType(FloatType()),
        batch_size=UDF_BATCH,
        input_tensor_shapes=[[width]],
    )


def predict_batch_udf(spark: Any, udf: Any, data: Path, out: Path) -> float:
    from pyspark.sql.functions import array

    started = time.perf_counter()
    frame = spark.read.parquet(str(data))
    # Scalar feature columns are combined with array(), as predict_batch_udf's docs say.
    x = frame["INPUT0"] if "INPUT0" in frame.columns else array(*frame.columns[1:])
    frame.select("id", udf(x).alias("OUTPUT0")).write.parquet(str(out))
    rows = spark.read.parquet(str(out)).count()
    return rows / (time.perf_counter() - started)


async def publish_keys(
    output: Path, registry: str, featurestore: str, redis_url: str, prefix: str
) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from modelserve.cli.batch.publish import publish

    client = aioredis.from_url(redis_url)
    before = (await client.info("memory"))["used_memory"]
    result = await publish(name="bench_scores", output=output, run_id="bench", registry=registry,
                           featurestore=featurestore, progress=False)  # fmt: skip
    after = (await client.info("memory"))["used_memory"]
    removed = 0
    async for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        removed += await client.unlink(key)
    await client.aclose()
    return {
        **result,
        "bytes_per_key": (after - before) / max(result["keys"], 1),
        "removed": removed,
    }


def cpu_floor(model: Path, data: Path, name: str) -> dict[str, float]:
    """CPU ms per 1M rows of each stage of the engine's own score_part on the first two
    parts, one thread, second pass (warm): what no engine on this box can go under, whatever
    the load. Stages are timed by wrapping the engine's functions (process CPU time, not
    wall: other tenants' load does not count); "write" is the rest of score_part (output
    batch, Parquet, fsync)."""
    from modelserve.cli.batch import parts as parts_mod
    from modelserve.cli.batch.columns import BatchFeeds, ColumnPlan, plan_columns
    from modelserve.cli.batch.scoring import Scorer, sha256_of
    from modelserve.cli.batch.sources import open_source
    from modelserve.tensors import TensorSpec

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])  # signature

    def specs(values: Any) -> tuple[TensorSpec, ...]:
        dims = lambda v: tuple(d if isinstance(d, int) else -1 for d in v.shape)  # noqa: E731
        return tuple(TensorSpec(v.name, "FP32", dims(v)) for v in values)

    inputs, outputs = specs(session.get_inputs()), specs(session.get_outputs())
    source = open_source(str(data))
    plan = plan_columns(source.schema, inputs, outputs, keys=["id"])
    scorer = Scorer.load(model, sha256=sha256_of(model), model=name, version=1, inputs=inputs,
                         outputs=outputs, threads=1)  # fmt: skip
    stage = dict.fromkeys(("read", "feeds", "ORT", "outputs"), 0.0)

    def timed(key: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            started = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                stage[key] += time.process_time() - started

        return wrapper

    def timed_read(*a: Any, **k: Any) -> Any:
        it = read(*a, **k)
        while True:
            started = time.process_time()
            batch = next(it, None)
            stage["read"] += time.process_time() - started
            if batch is None:
                return
            yield batch

    read, feeds, rows_of, outs, run = (
        parts_mod.read_part, ColumnPlan.batch_feeds, BatchFeeds.rows, ColumnPlan.output_arrays,
        scorer.run,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as staging:
        spec = parts_mod.JobSpec(
            name, 1, "", inputs, outputs, plan, source, plan.output_schema(source.schema, {}),
            "floor", staging, 4096,
        )  # fmt: skip
        parts_mod.read_part = timed_read  # type: ignore[assignment]
        ColumnPlan.batch_feeds = timed("feeds", feeds)  # type: ignore[method-assign]
        BatchFeeds.rows = timed("feeds", rows_of)  # type: ignore[method-assign]
        ColumnPlan.output_arrays = timed("outputs", outs)  # type: ignore[method-assign]
        scorer.run = timed("ORT", run)  # type: ignore[method-assign]
        try:
            for _ in range(2):  # the first pass faults in memory; the second counts
                for key in stage:
                    stage[key] = 0.0
                started = time.process_time()
                rows = sum(parts_mod.score_part(spec, scorer, p) for p in source.parts[:2])
                total = time.process_time() - started
        finally:
            parts_mod.read_part = read  # type: ignore[assignment]
            ColumnPlan.batch_feeds, ColumnPlan.output_arrays = feeds, outs  # type: ignore[method-assign]
            BatchFeeds.rows = rows_of  # type: ignore[method-assign]
    per = 1e9 / rows  # seconds per row -> ms per 1M rows
    floor = {k: v * per for k, v in stage.items()}
    floor["write"] = total * per - sum(floor.values())
    floor["total"] = total * per
    # Raw ORT on the same rows and batch, one thread, for the same CPU clock.
    x = np.zeros((4096, WIDTH[name]), np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    single = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    single.run(None, {"INPUT0": x})
    started = time.process_time()
    for _ in range(0, rows, 4096):
        single.run(None, {"INPUT0": x})
    floor["raw ORT"] = (time.process_time() - started) * per
    return floor


def _median(values: list[Any]) -> Any:
    """The median (of rates, or of (rate, batch) pairs: the median rate, the likeliest batch)."""
    if values and isinstance(values[0], tuple):
        batches = [b for _, b in values]
        return statistics.median(r for r, _ in values), max(batches, key=batches.count)
    return statistics.median(values)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of tabular")
    p.add_argument("--wide-rows", type=int, default=0, help="rows of wide (default: --rows)")
    p.add_argument("--raw-rows", type=int, default=262_144, help="in-memory rows for raw ORT")
    p.add_argument("--mem-rows", default="1000000,4000000", help="two row counts (tabular)")
    p.add_argument("--publish-keys", type=int, default=1_000_000, help="0: skip publishing")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--no-spark", action="store_true")
    p.add_argument("--models", default="tabular,wide", help="comma-separated: tabular,wide")
    p.add_argument("--repeat", type=int, default=1, help="alternated runs per model (median)")
    p.add_argument("--floor", action="store_true", help="also: CPU per stage, one thread")
    p.add_argument("--tabular-layout", choices=("scalar", "list"), default="scalar",
                   help="tabular data: 32 float columns (default) or one list column")  # fmt: skip
    p.add_argument(
        "--batch-rows", type=int, default=0, help="the local engine's --batch-rows (0: its default)"
    )
    p.add_argument("--workdir", default="", help="keep data here (default: a temp dir)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch-latest.md"))
    args = p.parse_args()
    if args.batch_rows:
        ENGINE_ARGS.extend(["--batch-rows", str(args.batch_rows)])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    registry, reg_addr = start("registry", work)
    procs = [registry]
    lines: list[str] = []
    try:
        models = asyncio.run(push_models(reg_addr, work))
        rows = {"tabular": args.rows, "wide": args.wide_rows or args.rows}
        spark = None
        if not args.no_spark:
            from modelserve.cli.batch.spark_engine import session

            spark = session(args.master, "modelserve-batch-bench")
            spark.sparkContext.setLogLevel("ERROR")
        results: dict[str, dict[str, Any]] = {}
        for name in args.models.split(","):
            n = rows[name]
            layout = args.tabular_layout if name == "tabular" else "list"
            data = work / f"{name}-{layout}-{n}.parquet"
            if not data.exists():
                write_data(data, WIDTH[name], n, seed=1, layout=layout)
            outputs = 1 if name == "tabular" else 10
            cache = work / "cache"
            udf = None
            if spark is not None:
                # Both warmed first on a small file (Spark's Python workers started, modules
                # imported, the model loaded and cached per worker); then the timed runs.
                warm = work / f"{name}-warm.parquet"
                write_data(warm, WIDTH[name], 4 * UDF_BATCH, seed=9, layout=layout)
                udf = make_udf(models[name], WIDTH[name], outputs)
                for d in (f"warm-spark-{name}", f"warm-udf-{name}"):
                    shutil.rmtree(work / d, ignore_errors=True)
                spark_engine(name, warm, work / f"warm-spark-{name}", reg_addr, cache, args.master)
                predict_batch_udf(spark, udf, warm, work / f"warm-udf-{name}")
            runs: dict[str, list[Any]] = {"raw": [], "local": [], "spark": [], "udf": []}
            # --repeat N: the measurements alternate (raw, local, spark, udf, raw, ...), so a
            # burst of load from the box's other tenants hits all of them, and the medians count.
            for _ in range(args.repeat):
                runs["raw"].append(raw_ort(models[name], data, min(n, args.raw_rows)))
                summary, _ = local_engine(name, data, work / f"out-local-{name}", reg_addr, cache)
                runs["local"].append(summary["rows"] / summary["seconds"])
                if spark is not None:
                    for d in (f"out-spark-{name}", f"out-udf-{name}"):
                        shutil.rmtree(work / d, ignore_errors=True)
                    s = spark_engine(
                        name, data, work / f"out-spark-{name}", reg_addr, cache, args.master
                    )
                    runs["spark"].append(s["rows"] / s["seconds"])
                    runs["udf"].append(
                        predict_batch_udf(spark, udf, data, work / f"out-udf-{name}")
                    )
            r: dict[str, Any] = {"rows": n, "runs": runs}
            r["raw"], r["raw_batch"] = _median(runs["raw"])
            r["local"] = _median(runs["local"])
            if runs["spark"]:
                r["spark"], r["udf"] = _median(runs["spark"]), _median(runs["udf"])
            if args.floor:
                r["floor"] = cpu_floor(models[name], data, name)
            results[name] = r
            print(f"{name}: {r}", file=sys.stderr, flush=True)
        mem: list[tuple[int, int, float]] = []
        for n in (int(v) for v in args.mem_rows.split(",") if v):
            data = work / f"tabular-{args.tabular_layout}-{n}.parquet"
            if not data.exists():
                write_data(data, WIDTH["tabular"], n, seed=2, layout=args.tabular_layout)
            out = work / f"out-mem-{n}"
            shutil.rmtree(out, ignore_errors=True)
            summary, peak = local_engine("tabular", data, out, reg_addr, work / "cache")
            mem.append((n, peak, summary["rows"] / summary["seconds"]))
        published = None
        if args.publish_keys:
            prefix = f"modelserve:fs:bench{os.getpid()}:"
            env = {
                "MODELSERVE_ONLINE_STORE": "redis",
                "MODELSERVE_REDIS_URL": args.redis_url,
                "MODELSERVE_REDIS_KEY_PREFIX": prefix,
                "MODELSERVE_REDIS_SOCKET_TIMEOUT_SECONDS": "2",
            }
            fs, fs_addr = start("featurestore", work, env=env)
            procs.append(fs)
            data = work / f"tabular-keys-{args.tabular_layout}-{args.publish_keys}.parquet"
            if not data.exists():
                write_data(data, WIDTH["tabular"], args.publish_keys, seed=3,
                           layout=args.tabular_layout)  # fmt: skip
            out = work / "out-publish"
            shutil.rmtree(out, ignore_errors=True)
            local_engine("tabular", data, out, reg_addr, work / "cache")
            published = asyncio.run(publish_keys(out, reg_addr, fs_addr, args.redis_url, prefix))
        if spark is not None:
            spark.stop()
        load_after = os.getloadavg()
        lines = report(results, mem, published, load_before, load_after, args)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


def report(
    results: dict[str, dict[str, Any]],
    mem: list[tuple[int, int, float]],
    published: dict[str, Any] | None,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
    args: argparse.Namespace,
) -> list[str]:
    k = lambda v: f"{v / 1000:,.1f}k"  # noqa: E731
    lines = [
        f"# batch bench ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPUs, master {args.master})",
        "",
        f"`{' '.join(['bench/batch_bench.py', *sys.argv[1:]])}`; each figure the median of "
        f"{args.repeat} alternated run(s); tabular layout: {args.tabular_layout}",
        "",
        f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{' '.join(f'{v:.2f}' for v in load_after)}",
        "",
        "| model | rows | raw ORT best (batch) | local | local/raw (goal) | spark "
        "| predict_batch_udf | spark/udf (goal) | udf/raw |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        local_ratio = r["local"] / r["raw"]
        spark_cells = ["-", "-", "-", "-"]
        if "spark" in r:
            goal = GOALS[(name, "spark/udf")]
            spark_cells = [
                k(r["spark"]),
                k(r["udf"]),
                f"{r['spark'] / r['udf']:.2f}x (>= {goal}x)",
                f"{r['udf'] / r['raw']:.2f}x",
            ]
        lines.append(
            f"| {name} | {r['rows']:,} | {k(r['raw'])} ({r['raw_batch']}) | {k(r['local'])} | "
            f"{local_ratio:.2f}x (>= {GOALS[(name, 'local/raw')]}x) | "
            + " | ".join(spark_cells)
            + " |"
        )
    floors = {name: r["floor"] for name, r in results.items() if "floor" in r}
    if floors:
        stages = list(next(iter(floors.values())))
        lines += [
            "",
            "CPU ms per 1M rows, one thread, warm (`--floor`: the engine's own score_part, "
            "stages timed with process CPU time):",
            "",
            "| model | " + " | ".join(stages) + " | raw ORT / total |",
            "|---|" + "---|" * (len(stages) + 1),
        ]
        lines += [
            f"| {name} | "
            + " | ".join(f"{f[k]:,.0f}" for k in stages)
            + f" | {f['raw ORT'] / f['total']:.2f}x |"
            for name, f in floors.items()
        ]
    if mem:
        lines += [
            "",
            "| local engine, tabular | peak RSS of the engine process | rows/s (vs raw ORT) |",
            "|---|---|---|",
        ]
        raw = results.get("tabular", {}).get("raw", 0.0)
        lines += [
            f"| {n:,} rows | {peak / 2**20:,.0f} MiB | {k(rate)}"
            + (f" ({rate / raw:.2f}x)" if raw else "")
            + " |"
            for n, peak, rate in mem
        ]
        if len(mem) == 2:
            lines.append(f"| ratio | {mem[1][1] / mem[0][1]:.2f} (goal: within 1.20) | |")
    if published:
        lines += [
            "",
            f"publish {published['keys']:,} keys to Redis (through the featurestore): "
            f"{published['keys_per_second']:,.0f} keys/s, {published['bytes_per_key']:.0f} "
            "bytes of Redis memory per key (used_memory delta / keys)",
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
