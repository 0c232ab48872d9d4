"""One ``modelserve batch run``: resolve, check, plan, score on an engine, commit, publish.

Everything that can be checked before scoring is: the model and its artifact, the input's
files and schema against the signature, the key column for publishing, the output path.
Only then is a row scored. Exit statuses: 0 done, 2 a problem with the input or options
(nothing written or published), 1 anything else (the staging dir is kept for a re-run).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from modelserve.cli.batch.columns import BatchInputError, ColumnPlan, parse_input_map, plan_columns
from modelserve.cli.batch.commit import AlreadyComplete, Staging
from modelserve.cli.batch.parts import JobSpec
from modelserve.cli.batch.resolve import ResolvedModel, resolve_model
from modelserve.cli.batch.sources import DEFAULT_PART_ROWS, Part, local_path, open_source

ENGINES = ("local", "spark")
DEFAULT_BATCH_ROWS = 4096  # rows per ONNX Runtime run; reads are sized apart (parts.py)
MAX_BATCH_ROWS = 1 << 22


@dataclass
class RunOptions:
    model: str
    input: str
    output: str
    engine: str = "local"
    master: str = "local[*]"
    key_columns: list[str] = field(default_factory=list)
    input_map: list[str] = field(default_factory=list)
    batch_rows: int = DEFAULT_BATCH_ROWS
    run_id: str = ""
    publish_lookup: str = ""
    registry: str = "127.0.0.1:8301"
    featurestore: str = "127.0.0.1:8401"
    input_format: str = ""
    nan_policy: str = "error"
    workers: int = 0
    part_rows: int = DEFAULT_PART_ROWS
    cache_dir: str = ""
    progress: bool | None = None


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def default_cache_dir() -> Path:
    return Path(
        os.environ.get("MODELSERVE_BATCH_CACHE_DIR")
        or Path.home() / ".cache" / "modelserve" / "artifacts"
    )


def run_batch(opts: RunOptions) -> dict[str, Any]:
    """Run the job; returns the summary. Raises BatchInputError before writing anything."""
    started = time.perf_counter()
    if opts.engine not in ENGINES:
        raise BatchInputError(f"--engine must be one of {', '.join(ENGINES)}")
    if not 1 <= opts.batch_rows <= MAX_BATCH_ROWS:
        raise BatchInputError(f"--batch-rows must be between 1 and {MAX_BATCH_ROWS}")
    run_id = opts.run_id or new_run_id()
    staging = Staging(local_path(opts.output), run_id)
    cache = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    model = asyncio.run(resolve_model(opts.registry, opts.model, cache))
    source = open_source(opts.input, fmt=opts.input_format, part_rows=max(1, opts.part_rows))
    plan = plan_columns(
        source.schema,
        model.inputs,
        model.outputs,
        keys=opts.key_columns,
        input_map=parse_input_map(opts.input_map),
        nan_policy=opts.nan_policy,
        label=model.label,
    )
    if opts.publish_lookup:
        from modelserve.cli.batch.generations import check_target
        from modelserve.cli.batch.publish import check_publishable

        check_publishable(opts.publish_lookup, plan, source.schema)
        asyncio.run(check_target(opts.registry, opts.publish_lookup))
    metadata = {
        "modelserve.model": model.model,
        "modelserve.version": str(model.version),
        "modelserve.sha256": model.sha256,
        "modelserve.run_id": run_id,
        "modelserve.scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    schema = plan.output_schema(source.schema, metadata)
    manifest = {
        "run_id": run_id,
        "model": model.model,
        "model_version": model.version,
        "model_sha256": model.sha256,
        "input": source.fingerprint(),
        "columns": _plan_json(plan),
    }
    try:
        done = staging.begin(manifest)
    except AlreadyComplete as exc:
        again: dict[str, Any] = {**exc.summary, "already_complete": True}
        if opts.publish_lookup:
            again["published"] = _publish(opts, again)
        return again
    todo = [p for p in source.parts if p.index not in done]
    workers = opts.workers or _cores()
    spec = JobSpec(
        model=model.model,
        version=model.version,
        sha256=model.sha256,
        inputs=model.inputs,
        outputs=model.outputs,
        plan=plan,
        source=source,
        schema=schema,
        run_id=run_id,
        staging=str(staging.dir),
        batch_rows=opts.batch_rows,
        threads=max(1, _cores() // max(1, min(workers, len(todo) or 1))),
    )
    try:
        rows = _score(opts, spec, model, todo, source.rows, workers)
    except BatchInputError:
        staging.abort()  # bad data: a re-run would meet it again
        raise
    rows_total = rows + _rows_of(staging.dir, done)
    if rows_total == 0:
        staging.abort()
        raise BatchInputError(f"input {opts.input!r} has no rows: the input is empty")
    elapsed = time.perf_counter() - started
    summary: dict[str, Any] = {
        "run_id": run_id,
        "model": model.model,
        "version": model.version,
        "sha256": model.sha256,
        "engine": opts.engine,
        "input": opts.input,
        "output": str(staging.output),
        "rows": rows_total,
        "rows_scored": rows,
        "parts": len(source.parts),
        "parts_skipped": len(done),
        "seconds": round(elapsed, 3),
        "rows_per_second": round(rows / elapsed, 1) if elapsed > 0 else 0.0,
        "key_columns": list(plan.keys),
        "output_columns": [o.name for o in plan.outputs],
    }
    staging.finish(schema, summary)
    if opts.publish_lookup:
        summary["published"] = _publish(opts, summary)
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    if summary.get("already_complete"):
        line = (
            f"run {summary['run_id']} was already complete: {summary['rows']} rows in "
            f"{summary['output']}"
        )
    else:
        line = (
            f"scored {summary['rows_scored']} rows of {summary['model']} v{summary['version']} "
            f"on {summary['engine']} in {summary['seconds']} s "
            f"({summary['rows_per_second']} rows/s); "
            f"{summary['parts']} parts ({summary['parts_skipped']} already done) -> "
            f"{summary['output']} (run {summary['run_id']}, {summary['rows']} rows)"
        )
    pub = summary.get("published")
    if pub:
        line += (
            f"; published {pub['keys']} keys as {pub['lookup_model']} v{pub['version']} "
            f"(view {pub['view']})"
        )
    return line


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _plan_json(plan: ColumnPlan) -> dict[str, Any]:
    """As it reads back from the manifest (tuples become lists), so a resume compares equal."""
    result: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(plan)))
    return result


def _rows_of(directory: Path, done: set[int]) -> int:
    import pyarrow.parquet as pq

    from modelserve.cli.batch.commit import part_name

    return sum(pq.ParquetFile(directory / part_name(i)).metadata.num_rows for i in done)


def _score(
    opts: RunOptions,
    spec: JobSpec,
    model: ResolvedModel,
    todo: list[Part],
    total_rows: int,
    workers: int,
) -> int:
    if opts.engine == "spark":
        from modelserve.cli.batch.spark_engine import run_spark

        return run_spark(spec, model.artifact, todo, master=opts.master)
    from modelserve.cli.batch.local_engine import run_local

    bar = tqdm(
        total=None if total_rows < 0 else sum(max(p.rows, 0) for p in todo),
        unit="row",
        unit_scale=True,
        desc=f"batch {model.label}",
        disable=None if opts.progress is None else not opts.progress,
    )
    with bar:
        return run_local(
            spec,
            model.artifact,
            todo,
            workers=workers,
            on_rows=bar.update,
        )


def _publish(opts: RunOptions, summary: dict[str, Any]) -> dict[str, Any]:
    from modelserve.cli.batch.publish import publish

    return asyncio.run(
        publish(
            name=opts.publish_lookup,
            output=Path(summary["output"]),
            run_id=summary["run_id"],
            registry=opts.registry,
            featurestore=opts.featurestore,
            progress=opts.progress,
        )
    )
