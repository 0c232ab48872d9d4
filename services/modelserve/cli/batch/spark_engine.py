"""The Spark engine: parts scored by Spark tasks through ``mapInArrow``.

The driver ships the verified artifact once (``SparkContext.addFile``: each executor fetches
it once) and builds a one-column DataFrame of part numbers, one Spark partition per part.
``mapInArrow`` hands each Python worker its part numbers as Arrow batches; the worker loads
the model once (cached by sha256 for the life of the reused Python worker, checked against
the sha256 before loading), reads its part with pyarrow straight from the input path,
runs it through the model ``--batch-rows`` rows at a time and commits the part file into the
staging dir (the same code as the local engine). Rows never travel through the JVM or the
driver: the only Arrow data crossing the JVM boundary is (part, rows) pairs. Executors
therefore need the input and the output on a shared filesystem (a mount, or the same paths
on every node), and modelserve installed in their Python (``spark.pyspark.python``).

A failed task attempt leaves no part file (parts are renamed into place when complete), so
Spark's retries and speculative attempts are safe; a part file written twice is the same part.
Progress: the Spark UI (stages, tasks, input) and Spark's console progress bar.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modelserve.cli.batch.columns import BatchInputError
from modelserve.cli.batch.parts import JobSpec, score_part, scorer_for
from modelserve.cli.batch.sources import Part

_INPUT_ERROR = re.compile(r"BatchInputError: (.*)")


def session(master: str, app_name: str = "modelserve-batch") -> Any:
    """The active SparkSession, or a new one on ``master``."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.showConsoleProgress", "true")
        .config("spark.pyspark.python", sys.executable)
        .getOrCreate()
    )


def run_spark(spec: JobSpec, artifact: Path, parts: Sequence[Part], *, master: str) -> int:
    if not parts:
        return 0
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise BatchInputError(
            "--engine spark needs PySpark: pip install 'modelserve[spark]' (and Java 17)"
        ) from None
    spark = session(master)
    spark.sparkContext.addFile(str(artifact))
    spec = dataclasses.replace(spec, threads=1)  # one core per task slot
    by_position = list(parts)
    artifact_name = artifact.name
    schema = "part long, rows long"

    def score(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import SparkFiles

        scorer = scorer_for(spec, Path(SparkFiles.get(artifact_name)))
        for batch in batches:
            positions = batch.column(0).to_pylist()
            rows = [score_part(spec, scorer, by_position[i]) for i in positions]
            yield pa.RecordBatch.from_pydict(
                {"part": [by_position[i].index for i in positions], "rows": rows},
                schema=pa.schema([("part", pa.int64()), ("rows", pa.int64())]),
            )

    spark.sparkContext.setJobDescription(
        f"modelserve batch {spec.model} v{spec.version} run {spec.run_id}"
    )
    frame = spark.range(0, len(by_position), 1, numPartitions=len(by_position))
    try:
        result = frame.mapInArrow(score, schema).collect()
    except Exception as exc:  # Py4JJavaError / PythonException carry the worker's traceback
        match = _INPUT_ERROR.search(str(exc))
        if match:
            raise BatchInputError(match.group(1).strip()) from None
        raise
    return sum(int(r["rows"]) for r in result)
