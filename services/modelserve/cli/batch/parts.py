"""Scoring one part in an executor (a local engine thread or process, a Spark Python worker).

The model is loaded once per executor and reused for every part it scores. A part is read in
record batches of about ``READ_BYTES`` of input (at least ``batch_rows`` rows), each batch is
run through the model ``batch_rows`` rows at a time, and the part is written as one file.
Reads and runs are sized apart because they want different sizes: a Parquet read pays a
fixed cost per batch (so bigger is cheaper), while an ONNX Runtime run is fastest when its
activations stay in cache (raw ORT on the bench models is 1.3-2.5x slower at 65,536 rows a run
than at 4,096; bench/batch_bench.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from modelserve.cli.batch.columns import BatchFeeds, ColumnPlan
from modelserve.cli.batch.commit import StagedPart, stage_part
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
    batch_rows: int  # rows per ONNX Runtime run
    threads: int = 1

    @property
    def read_rows(self) -> int:
        """Rows per record batch read: about READ_BYTES of model input, a multiple of
        ``batch_rows``; what bounds an executor's memory, whatever the part's size."""
        per_row = sum(max(b.width, 1) * _ITEM_BYTES.get(b.datatype, 8) for b in self.plan.inputs)
        runs = max(1, READ_BYTES // max(1, per_row * self.batch_rows))
        return min(max(self.batch_rows, MAX_READ_ROWS), runs * self.batch_rows)


READ_BYTES = 16 << 20
MAX_READ_ROWS = 1 << 18
_ITEM_BYTES = {"FP16": 2, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "BOOL": 1}
_ITEM_BYTES.update(dict.fromkeys(("FP32", "INT32", "UINT32"), 4))

_SCORERS: dict[tuple[str, int, int], Scorer] = {}


def scorer_for(spec: JobSpec, artifact: Path, slot: int = 0) -> Scorer:
    """This process's session for the model, one per ``slot`` (an executor thread: a session
    runs one batch at a time), kept for the next part and the next run."""
    key = (spec.sha256, spec.threads, slot)
    found = _SCORERS.get(key)
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
        _SCORERS[key] = found
    return found


def score_part(
    spec: JobSpec, scorer: Scorer, part: Part, on_rows: Callable[[int], None] | None = None
) -> int:
    """Score and commit one part; returns its row count. ``on_rows`` after each batch
    scored (progress; the part is committed only when all are)."""
    return stage_scored_part(spec, scorer, part, on_rows).commit()


def stage_scored_part(
    spec: JobSpec, scorer: Scorer, part: Part, on_rows: Callable[[int], None] | None = None
) -> StagedPart:
    """Score one part into its temp file; the caller commits it (``StagedPart.commit``)."""
    batches = _batches(spec, scorer, part, on_rows or (lambda _n: None))
    return stage_part(Path(spec.staging), part.index, spec.schema, batches)


def _batches(
    spec: JobSpec, scorer: Scorer, part: Part, on_rows: Callable[[int], None]
) -> Iterator[pa.RecordBatch]:
    plan = spec.plan
    scored_at = pa.scalar(datetime.now(UTC), pa.timestamp("ms", tz="UTC"))
    where = part.describe()
    step = spec.batch_rows
    feeds: BatchFeeds | None = None
    metadata: dict[int, list[pa.Array]] = {}
    for batch in read_part(spec.source, part, plan.read_columns, spec.read_rows):
        n = batch.num_rows
        if n == 0:
            continue
        feeds = plan.batch_feeds(batch, where).reuse(feeds)
        runs = [scorer.run(feeds.rows(i, min(i + step, n))) for i in range(0, n, step)]
        results = (
            runs[0]
            if len(runs) == 1
            else {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
        )
        arrays = [batch.column(k) for k in plan.keys]
        arrays += plan.output_arrays(results, n)
        if (
            n not in metadata
        ):  # the same for every batch of n rows: built once (arrays are immutable)
            zeros = pa.array(np.zeros(n, np.int32))
            metadata[n] = [
                pa.DictionaryArray.from_arrays(zeros, pa.array([spec.model])),
                pa.repeat(pa.scalar(spec.version, pa.int64()), n),
                pa.DictionaryArray.from_arrays(zeros, pa.array([spec.sha256])),
                pa.DictionaryArray.from_arrays(zeros, pa.array([spec.run_id])),
                pa.repeat(scored_at, n),
            ]
        yield pa.RecordBatch.from_arrays(arrays + metadata[n], schema=spec.schema)
        on_rows(n)
