"""Scoring one part in an executor process (local pool worker or Spark Python worker).

The model is loaded once per process (keyed by sha256) and reused for every part that process
scores; a part is read in record batches, scored batch by batch and written as one file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from modelserve.cli.batch.columns import ColumnPlan
from modelserve.cli.batch.commit import write_part
from modelserve.cli.batch.scoring import Scorer
from modelserve.cli.batch.sources import Part, Source, read_part
from modelserve.tensors import TensorSpec


@dataclass(frozen=True)
class JobSpec:
    """Everything an executor needs, picklable: no channels, no sessions."""

    model: str
    version: int
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    plan: ColumnPlan
    source: Source
    schema: pa.Schema  # the output schema, with the run's metadata
    run_id: str
    staging: str
    batch_rows: int
    threads: int = 1


_SCORERS: dict[str, Scorer] = {}


def scorer_for(spec: JobSpec, artifact: Path) -> Scorer:
    found = _SCORERS.get(spec.sha256)
    if found is None:
        found = Scorer.load(
            artifact,
            sha256=spec.sha256,
            model=spec.model,
            version=spec.version,
            inputs=spec.inputs,
            outputs=spec.outputs,
            threads=spec.threads,
        )
        _SCORERS[spec.sha256] = found
    return found


def score_part(
    spec: JobSpec, scorer: Scorer, part: Part, on_rows: Callable[[int], None] | None = None
) -> int:
    """Score and commit one part; returns its row count. ``on_rows`` after each batch
    scored (progress; the part is committed only when all are)."""
    batches = _batches(spec, scorer, part, on_rows or (lambda _n: None))
    return write_part(Path(spec.staging), part.index, spec.schema, batches)


def _batches(
    spec: JobSpec, scorer: Scorer, part: Part, on_rows: Callable[[int], None]
) -> Iterator[pa.RecordBatch]:
    plan = spec.plan
    scored_at = pa.scalar(datetime.now(UTC), pa.timestamp("ms", tz="UTC"))
    where = part.describe()
    for batch in read_part(spec.source, part, plan.read_columns, spec.batch_rows):
        n = batch.num_rows
        if n == 0:
            continue
        results = scorer.run(plan.feeds(batch, where))
        arrays = [batch.column(k) for k in plan.keys]
        arrays += plan.output_arrays(results, n)
        zeros = pa.array(np.zeros(n, np.int32))
        arrays += [
            pa.DictionaryArray.from_arrays(zeros, pa.array([spec.model])),
            pa.repeat(pa.scalar(spec.version, pa.int64()), n),
            pa.DictionaryArray.from_arrays(zeros, pa.array([spec.sha256])),
            pa.DictionaryArray.from_arrays(zeros, pa.array([spec.run_id])),
            pa.repeat(scored_at, n),
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=spec.schema)
        on_rows(n)
