"""Input datasets (Parquet or CSV: a file, a directory, a glob, a hive-partitioned tree) split
into parts, the unit of work, of commit and of resumption.

A Parquet part is a run of consecutive row groups of one file (about ``part_rows`` rows);
a CSV file is one part. Parts are planned from file metadata only, in a fixed order, so the
same input always gives the same parts: that is what lets a re-run with the same run id skip
the parts already committed. Parts are read in Arrow record batches of ``batch_rows`` rows,
never whole.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from modelserve.cli.batch.columns import BatchInputError

FORMATS = ("parquet", "csv")
DEFAULT_PART_ROWS = 262_144
READ_BUFFER = 1 << 20
_SUFFIX = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Part:
    index: int
    path: str
    row_groups: tuple[int, ...]  # () = the whole file (CSV)
    rows: int  # -1 when unknown before reading (CSV)

    def describe(self) -> str:
        if self.row_groups:
            return f"{self.path} row groups {self.row_groups[0]}..{self.row_groups[-1]}"
        return self.path


@dataclass(frozen=True)
class Source:
    """What parts are read with: the format, the dataset schema, the partitioning base."""

    format: str
    base: str  # the directory hive partitions are relative to ("" = none)
    schema: pa.Schema
    parts: tuple[Part, ...]

    @property
    def rows(self) -> int:
        """Total rows, or -1 when some part's count is unknown (CSV)."""
        return -1 if any(p.rows < 0 for p in self.parts) else sum(p.rows for p in self.parts)

    def fingerprint(self) -> list[dict[str, Any]]:
        """What identifies the input for a resumed run: every part, with file size and mtime."""
        out = []
        for p in self.parts:
            st = os.stat(p.path)
            out.append(
                {
                    "path": p.path,
                    "row_groups": list(p.row_groups),
                    "rows": p.rows,
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                }
            )
        return out


def local_path(uri: str) -> str:
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri:
        raise BatchInputError(
            f"{uri!r}: only local or mounted paths (or file://) are supported; mount object "
            "storage (e.g. s3fs, gcsfuse) and pass the path"
        )
    return uri


def open_source(uri: str, *, fmt: str = "", part_rows: int = DEFAULT_PART_ROWS) -> Source:
    """Find the files, read the schema and plan the parts; reads no rows."""
    path = local_path(uri)
    base = ""
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
    elif os.path.isdir(path):
        base = path
        files = sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
    elif os.path.isfile(path):
        files = [path]
    else:
        raise BatchInputError(f"input {uri!r} does not exist")
    if not files:
        raise BatchInputError(f"input {uri!r} holds no files: the input is empty")
    fmt = fmt or _format_of(files, uri)
    if fmt not in FORMATS:
        raise BatchInputError(f"input format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    try:
        dataset = _dataset(files, fmt, base)
        schema = dataset.schema
        parts = tuple(_plan(files, fmt, part_rows))
    except (OSError, pa.ArrowException) as exc:
        raise BatchInputError(f"cannot read input {uri!r}: {exc}") from None
    if fmt == "parquet" and sum(p.rows for p in parts) == 0:
        raise BatchInputError(f"input {uri!r} has no rows: the input is empty")
    return Source(format=fmt, base=base, schema=schema, parts=parts)


def _format_of(files: list[str], uri: str) -> str:
    kinds = {_SUFFIX.get(Path(f).suffix.lower()) for f in files}
    if len(kinds) == 1 and None not in kinds:
        return str(kinds.pop())
    raise BatchInputError(
        f"cannot tell the format of {uri!r} from its file names; pass --input-format parquet|csv"
    )


def _dataset(files: list[str], fmt: str, base: str) -> ds.Dataset:
    if base:
        return ds.dataset(files, format=fmt, partitioning="hive", partition_base_dir=base)
    return ds.dataset(files, format=fmt)


def _plan(files: list[str], fmt: str, part_rows: int) -> Iterator[Part]:
    index = 0
    for f in files:
        if fmt == "csv":
            yield Part(index, f, (), -1)
            index += 1
            continue
        meta = pq.ParquetFile(f).metadata
        group: list[int] = []
        rows = 0
        for rg in range(meta.num_row_groups):
            group.append(rg)
            rows += meta.row_group(rg).num_rows
            if rows >= part_rows:
                yield Part(index, f, tuple(group), rows)
                index, group, rows = index + 1, [], 0
        if group or meta.num_row_groups == 0:
            yield Part(index, f, tuple(group), rows)
            index += 1


def read_part(
    source: Source, part: Part, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The part's rows in record batches of at most ``batch_rows``, only ``columns``."""
    if source.format == "parquet" and not source.base:
        # Plain files: the Parquet reader itself (less held in memory than the dataset
        # scanner's read-ahead); one thread, as parallelism is across parts. A buffered
        # stream reads a column chunk a page at a time: unbuffered, the reader loads whole
        # column chunks, so memory grew with the file's row-group size (128 MiB per executor
        # for the bench's `wide` row groups, not the batch's 16 MiB).
        if not part.row_groups:
            return
        try:
            reader = pq.ParquetFile(part.path, pre_buffer=False, buffer_size=READ_BUFFER)
            yield from reader.iter_batches(
                batch_size=batch_rows,
                row_groups=list(part.row_groups),
                columns=columns,
                use_threads=False,
            )
        except (OSError, pa.ArrowException) as exc:
            raise BatchInputError(f"cannot read {part.describe()}: {exc}") from None
        return
    dataset = _dataset([part.path], source.format, source.base)
    fragment = next(iter(dataset.get_fragments()))
    if part.row_groups:
        fragment = fragment.subset(row_group_ids=list(part.row_groups))
    elif source.format == "parquet":
        return
    # One thread: parallelism is across parts (one executor process per core).
    scanner = ds.Scanner.from_fragment(
        fragment, schema=dataset.schema, columns=columns, batch_size=batch_rows, use_threads=False
    )
    try:
        yield from scanner.to_batches()
    except (OSError, pa.ArrowException) as exc:
        raise BatchInputError(f"cannot read {part.describe()}: {exc}") from None
