"""``--publish-lookup NAME``: a committed batch run into the online store as a new generation,
then the lookup model NAME switched to it in one registry write.

A generation is a feature view of its own, ``NAME.RUN_ID``, holding the run's outputs by key.
Only after every key has been written is a lookup version pushed that reads that view, with the
label ``production`` in the same PushVersion, so the switch is the registry's single atomic
label move: a caller resolves one version, hence reads one view, per answer, and never sees
a half-loaded generation (the view is not referenced by any version until it is complete).
The previous generation's version and view stay: ``modelserve batch rollback NAME`` moves
``production`` back to it; older generations are expired (``generations.py``).

Writes go through the feature store's WriteOnlineFeatures, ``WRITE_ROWS`` keys per call (on
Redis one EVALSHA, i.e. one round trip per call), a few calls in flight.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from tqdm import tqdm

from modelserve.catalog.replica import DEFAULT_LABEL
from modelserve.cli import connect
from modelserve.cli.batch.columns import BatchInputError, ColumnPlan
from modelserve.cli.batch.generations import expire, production_version
from modelserve.names import validate_name
from modelserve.proto.modelserve.v1 import (
    featurestore_pb2,
    featurestore_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from modelserve.tensors import to_proto_tensor

WRITE_ROWS = 4096
IN_FLIGHT = 4
WRITE_TIMEOUT_S = 60.0
_FEATURE_TYPES = ("FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES")


def view_name(name: str, run_id: str) -> str:
    return f"{name}.{run_id}"


def check_publishable(name: str, plan: ColumnPlan, schema: pa.Schema) -> None:
    """Everything publishing needs, checked before a row is scored."""
    try:
        validate_name(name, "lookup model name")
        validate_name(view_name(name, "x" * 64), "lookup view name")
    except Exception as exc:
        raise BatchInputError(f"--publish-lookup {name!r}: {exc}") from None
    if len(plan.keys) != 1:
        raise BatchInputError(
            "--publish-lookup needs exactly one --key-column (one key per row); "
            f"got {len(plan.keys)}"
        )
    key_type = schema.field(plan.keys[0]).type
    if not (_is_int(key_type) or _is_text(key_type)):
        raise BatchInputError(
            f"key column {plan.keys[0]!r} is {key_type}; lookups take integer or string keys"
        )
    for out in plan.outputs:
        if out.datatype not in _FEATURE_TYPES or not out.width:
            raise BatchInputError(
                f"output {out.name!r} ({out.datatype} {list(out.dims)}) cannot be published: the "
                f"feature store takes {', '.join(_FEATURE_TYPES)} of fixed shape"
            )


def _is_int(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t))


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _dims(t: pa.DataType) -> list[int]:
    return [t.list_size] if pa.types.is_fixed_size_list(t) else []


def _datatype(t: pa.DataType) -> str:
    value = t.value_type if pa.types.is_fixed_size_list(t) else t
    for name, arrow in (
        ("FP32", pa.float32()),
        ("FP64", pa.float64()),
        ("INT32", pa.int32()),
        ("INT64", pa.int64()),
        ("BOOL", pa.bool_()),
        ("BYTES", pa.binary()),
    ):
        if value == arrow:
            return name
    raise BatchInputError(f"output type {t} cannot be published")


async def publish(
    *,
    name: str,
    output: Path,
    run_id: str,
    registry: str,
    featurestore: str,
    progress: bool | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    summary = json.loads((output / "_SUCCESS").read_text())
    (key,) = summary["key_columns"]
    outputs: list[str] = summary["output_columns"]
    dataset = ds.dataset(str(output), format="parquet")
    schema = dataset.schema
    view = view_name(name, run_id)
    int_keys = _is_int(schema.field(key).type)
    features = [
        featurestore_pb2.Feature(
            name=o, datatype=_datatype(schema.field(o).type), shape=_dims(schema.field(o).type)
        )
        for o in outputs
    ]
    async with (
        connect.channel(featurestore) as fs_channel,
        connect.channel(registry) as reg_channel,
    ):
        fs = featurestore_pb2_grpc.FeatureStoreStub(fs_channel)
        await fs.ApplyFeatureView(
            featurestore_pb2.FeatureView(
                name=view,
                entity_key=key,
                entity_type="INT64" if int_keys else "STRING",
                features=features,
                description=f"batch run {run_id} of {summary['model']} v{summary['version']}",
            ),
            timeout=10,
        )
        registry_stub = registry_pb2_grpc.RegistryStub(reg_channel)
        previous = await production_version(registry_stub, name)
        keys = await _write_all(fs, dataset, view, key, outputs, summary["rows"], progress)
        version = await _push_lookup(registry_stub, name, view, key, int_keys, features, summary)
        expired = await expire(registry_stub, fs, name, keep={version.version, previous})
    elapsed = time.perf_counter() - started
    return {
        "lookup_model": name,
        "version": version.version,
        "view": view,
        "keys": keys,
        "previous_version": previous,
        "expired_views": expired,
        "seconds": round(elapsed, 3),
        "keys_per_second": round(keys / elapsed, 1) if elapsed > 0 else 0.0,
    }


async def _write_all(
    fs: featurestore_pb2_grpc.FeatureStoreStub,
    dataset: ds.Dataset,
    view: str,
    key: str,
    outputs: list[str],
    total: int,
    progress: bool | None,
) -> int:
    now_ms = time.time_ns() // 1_000_000
    written = 0
    in_flight: set[asyncio.Task[int]] = set()
    bar = tqdm(
        total=total,
        unit="key",
        unit_scale=True,
        desc=f"publish {view}",
        disable=None if progress is None else not progress,
    )
    with bar:
        async for request in _requests(dataset, view, key, outputs, now_ms):
            if len(in_flight) >= IN_FLIGHT:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    written += task.result()
                    bar.update(task.result())
            in_flight.add(asyncio.create_task(_write(fs, request)))
        for n in await asyncio.gather(*in_flight):
            written += n
            bar.update(n)
    return written


async def _write(fs: featurestore_pb2_grpc.FeatureStoreStub, request: Any) -> int:
    await fs.WriteOnlineFeatures(request, timeout=WRITE_TIMEOUT_S)
    return len(request.entity_keys)


async def _requests(
    dataset: ds.Dataset, view: str, key: str, outputs: list[str], now_ms: int
) -> AsyncIterator[featurestore_pb2.WriteOnlineFeaturesRequest]:
    for batch in dataset.to_batches(columns=[key, *outputs], batch_size=WRITE_ROWS):
        n = batch.num_rows
        if not n:
            continue
        keys = [str(k) for k in batch.column(0).to_pylist()]
        values = [to_proto_tensor(o, _numpy(batch.column(i + 1), n)) for i, o in enumerate(outputs)]
        yield featurestore_pb2.WriteOnlineFeaturesRequest(
            view=view, entity_keys=keys, values=values, event_unix_ms=[now_ms] * n
        )
        await asyncio.sleep(0)


def _numpy(column: pa.Array, n: int) -> np.ndarray:
    if pa.types.is_fixed_size_list(column.type):
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat).reshape(n, column.type.list_size)
    if pa.types.is_binary(column.type):
        return np.asarray(column.to_pylist(), dtype=object)
    return np.asarray(column.to_numpy(zero_copy_only=False))


async def _push_lookup(
    stub: registry_pb2_grpc.RegistryStub,
    name: str,
    view: str,
    key: str,
    int_keys: bool,
    features: list[featurestore_pb2.Feature],
    summary: dict[str, Any],
) -> registry_pb2.ModelVersion:
    description = json.dumps(
        {
            "batch_run": summary["run_id"],
            "view": view,
            "model": summary["model"],
            "version": summary["version"],
            "sha256": summary["sha256"],
        },
        sort_keys=True,
    )
    header = registry_pb2.PushVersionRequest.Header(
        model=name, labels=[DEFAULT_LABEL], description=description
    )
    header.config.lookup.CopyFrom(
        registry_pb2.LookupConfig(
            view=view,
            entity_input=key,
            entity_datatype="INT64" if int_keys else "BYTES",
            outputs=[
                registry_pb2.LookupOutput(
                    name=f.name, feature=f.name, datatype=f.datatype, shape=list(f.shape) or [1]
                )
                for f in features
            ],
        )
    )

    async def one() -> AsyncIterator[registry_pb2.PushVersionRequest]:
        yield registry_pb2.PushVersionRequest(header=header)

    version: registry_pb2.ModelVersion = await stub.PushVersion(one(), timeout=30)
    return version
