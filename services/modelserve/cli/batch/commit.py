"""The commit protocol of a batch run: staging dir by run id, one file per part, a manifest,
``_SUCCESS``, one rename.

    OUT.parent/.OUT.name.staging-RUN_ID/
        _manifest.json        written first: run id, model, sha256, input parts (+ size/mtime)
        part-00000.parquet    one per input part, renamed into place only when complete
        .part-00001.parquet.<pid>.tmp   a part being written (removed on resume)
        _common_metadata      the dataset schema with the run's metadata
        _SUCCESS              written last: the run's summary as JSON
    -> renamed to OUT when every part is there.

Readers never see a half-written run: OUT appears in one ``rename`` after ``_SUCCESS``. A run
that died is re-run with the same ``--run-id``: the manifest must match (same model sha256,
same input files), committed parts are skipped, the rest are written; a part is one file, so
there are no duplicates and no gaps. A run that fails on bad data deletes its staging dir:
re-running would meet the same data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from modelserve.cli.batch.columns import META_COLUMNS, BatchInputError

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AlreadyComplete(Exception):
    """OUT holds a finished run with this run id: nothing to do."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__("already complete")
        self.summary = summary


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class Staging:
    def __init__(self, output: str, run_id: str) -> None:
        if not RUN_ID_RE.match(run_id):
            raise BatchInputError(
                f"run id must match {RUN_ID_RE.pattern} (it names a directory); got {run_id!r}"
            )
        self.output = Path(output)
        self.run_id = run_id
        self.dir = self.output.parent / f".{self.output.name}.staging-{run_id}"

    def begin(self, manifest: dict[str, Any]) -> set[int]:
        """Create or resume the staging dir; returns the indexes of committed parts."""
        if self.output.exists():
            done = self.output / SUCCESS
            if done.exists():
                summary = json.loads(done.read_text())
                if summary.get("run_id") == self.run_id:
                    raise AlreadyComplete(summary)
            raise BatchInputError(
                f"output {str(self.output)!r} already exists (from another run); batch runs "
                "never overwrite: choose a new output path"
            )
        if not self.output.parent.is_dir():
            raise BatchInputError(
                f"the output's parent directory {str(self.output.parent)!r} does not exist"
            )
        if self.dir.exists():
            return self._resume(manifest)
        self.dir.mkdir()
        _write_atomic(self.dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        return set()

    def _resume(self, manifest: dict[str, Any]) -> set[int]:
        old = json.loads((self.dir / MANIFEST).read_text())
        for field in ("model_sha256", "input", "columns"):
            if old.get(field) != manifest.get(field):
                raise BatchInputError(
                    f"run id {self.run_id!r} was started with a different "
                    f"{field.replace('_', ' ')}; "
                    f"re-run it with the same model and input, or use a new --run-id "
                    f"(or delete {str(self.dir)!r})"
                )
        done = set()
        for entry in os.scandir(self.dir):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)  # a part that was being written when the run died
            elif entry.name.startswith("part-") and entry.name.endswith(".parquet"):
                done.add(int(entry.name[5:10]))
        return done

    def finish(self, schema: pa.Schema, summary: dict[str, Any]) -> None:
        pq.write_metadata(schema, self.dir / "_common_metadata")
        _write_atomic(self.dir / SUCCESS, json.dumps(summary, sort_keys=True))
        _fsync_dir(self.dir)
        os.rename(self.dir, self.output)
        _fsync_dir(self.output.parent)

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class StagedPart:
    """A part written to its temp file: neither durable nor visible until ``commit``."""

    tmp: Path
    final: Path
    rows: int

    def commit(self) -> int:
        """fsync, then rename into place (a part file exists only when complete)."""
        try:
            with self.tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.final)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self.rows


def write_part(directory: Path, index: int, schema: pa.Schema, batches: Any) -> int:
    """Write one part from an iterator of record batches; visible only once complete."""
    return stage_part(directory, index, schema, batches).commit()


def stage_part(directory: Path, index: int, schema: pa.Schema, batches: Any) -> StagedPart:
    """Write one part to its temp file; ``commit()`` the result to make it durable and
    visible (the local engine does that beside scoring the next part: an fsync waits on the
    disk, 15-50 ms per part here)."""
    final = directory / part_name(index)
    tmp = directory / f".{part_name(index)}.{os.getpid()}.tmp"
    rows = 0
    # Dictionary pages only where values repeat (the metadata columns, dictionary-typed keys):
    # on unique keys and float scores the writer builds a dictionary only to give it up, which
    # was 40% of writing a part (bench/batch_bench.py, tabular).
    repeated = [f.name for f in schema if f.name in META_COLUMNS or pa.types.is_dictionary(f.type)]
    # Statistics on every column but the dictionary-typed metadata (model name, sha256, run
    # id: one value per part, also in the schema's metadata): the writer decodes each row
    # of a dictionary column to take its min/max, a third of writing a `tabular` part.
    stats = [
        f.name for f in schema if not (f.name in META_COLUMNS and pa.types.is_dictionary(f.type))
    ]
    try:
        with pq.ParquetWriter(
            tmp, schema, use_dictionary=repeated, write_statistics=stats
        ) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return StagedPart(tmp, final, rows)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
