"""``modelserve features``: apply, list, look up and materialise feature views.

``apply FILE.json`` takes one FeatureView message as JSON (protobuf's JSON mapping:
snake_case or camelCase names). A feature may give its ``default`` as a JSON value of its
shape (number, bool, string, nested lists) instead of base64 ``default_raw``:

    {"name": "users", "entity_key": "user_id", "entity_type": "STRING", "ttl_seconds": 86400,
     "features": [{"name": "score", "datatype": "FP32", "default": 0.5},
                  {"name": "counts", "datatype": "INT64", "shape": [3]}],
     "source": {"format": "parquet", "path": "data/users.parquet",
                "event_timestamp_column": "event_ts"}}

``materialize`` reads the source file here, on this machine (see modelserve.cli.materialize).
Exit codes: 0 done, 1 the feature store refused or failed, 2 bad input (file, flags).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import grpc
import numpy as np
from google.protobuf import json_format

from modelserve.cli import connect, output
from modelserve.cli.options import (
    Args,
    BadValue,
    Parsed,
    address,
    client,
    globals_of,
    output_format,
    read_command,
)
from modelserve.proto.modelserve.v1 import featurestore_pb2 as fs
from modelserve.proto.modelserve.v1 import featurestore_pb2_grpc
from modelserve.tensors import DTYPES, from_proto_tensor, serialize_bytes_tensor

TIMEOUT_S = 10.0
Stub = Any  # featurestore_pb2_grpc.FeatureStoreStub on an aio channel


@click.group("features", help="feature views: apply, list, get, materialize")
def group() -> None:
    pass


def _invoke(ctx: click.Context, args: Args) -> int:
    client(ctx)
    args.featurestore = address(ctx, "featurestore")
    args.output = output_format(ctx)
    return run(args)


@group.command("apply", help="create or evolve a view (JSON)")
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_context
def apply(ctx: click.Context, file: Path) -> int:
    return _invoke(ctx, Args(features_command="apply", file=file))


@group.command("list", help="views, their sources and watermarks")
@click.pass_context
@read_command
def list_views(ctx: click.Context) -> int:
    return _invoke(ctx, Args(features_command="list"))


@group.command("get", help="online features of KEYs (JSON; -o table for a table)")
@click.argument("view")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@click.option("--feature", multiple=True, help="only these feature(s)")
@click.pass_context
@read_command
def get(ctx: click.Context, view: str, keys: tuple[str, ...], feature: tuple[str, ...]) -> int:
    args = Args(features_command="get", view=view, keys=list(keys), feature=list(feature))
    # `get` printed JSON before -o existed: JSON stays its default, -o table asks for rows.
    client(ctx)
    args.featurestore = address(ctx, "featurestore")
    args.output = globals_of(ctx).output or "json"
    return run(args)


@group.command("materialize", help="load the newest rows of VIEW's source file")
@click.argument("view")
@click.option(
    "--start",
    type=Parsed(lambda t: parse_time(t), "ISO8601"),
    default="1970-01-01",
    help="ISO 8601 (default: 1970)",
)
@click.option(
    "--end",
    type=Parsed(lambda t: parse_time(t), "ISO8601"),
    help="ISO 8601, exclusive (default: now)",
)
@click.option(
    "--source", type=click.Path(path_type=Path), help="the file (default: the view's source path)"
)
@click.option(
    "--full",
    is_flag=True,
    help="ignore the watermark and rewrite [start, end) (safe: older never beats newer)",
)
@click.option("--batch-rows", type=int, help="rows per write (default 1000)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.pass_context
def materialize_command(ctx: click.Context, as_json: bool, **given: Any) -> int:
    return _invoke(ctx, Args(features_command="materialize", json=as_json, **given))


def _iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> int:
    """ISO 8601 date/time as unix ms; no zone = UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadValue(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def run(args: Args) -> int:
    try:
        return asyncio.run(_run(args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if args.features_command == "materialize":
            print("the watermark did not move: rerun the same command", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # also materialize's SourceError
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _run(args: Args) -> int:
    async with connect.channel(args.featurestore) as channel:
        stub = featurestore_pb2_grpc.FeatureStoreStub(channel)
        command = args.features_command
        if command == "apply":
            await _apply(stub, args.file)
        elif command == "list":
            await _list(stub, args.output)
        elif command == "get":
            await _get(stub, args.view, args.keys, args.feature, args.output)
        else:
            await _materialize(stub, args)
    return 0


async def _materialize(stub: Stub, args: Args) -> None:
    # Imported here: pyarrow and tqdm take a while to load, and only this command needs them.
    try:
        from modelserve.cli.materialize import materialize
    except ImportError as exc:
        raise SystemExit(
            f"features materialize needs the CLI extra ({exc.name} is missing): "
            "pip install 'modelserve[cli]'"
        ) from None

    batching = {} if args.batch_rows is None else {"batch_rows": args.batch_rows}
    report = await materialize(
        stub,
        args.view,
        start_ms=args.start,
        end_ms=args.end if args.end is not None else time.time_ns() // 1_000_000,
        source=args.source,
        ignore_watermark=args.full,
        progress=False if args.no_progress else None,
        **batching,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.line())


async def _apply(stub: Stub, path: Path) -> None:
    text = await asyncio.to_thread(path.read_text)
    try:
        view = parse_view_json(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    applied = await stub.ApplyFeatureView(view, timeout=TIMEOUT_S)
    print(
        f"applied {applied.name}: entity {applied.entity_key} {applied.entity_type}, "
        f"{len(applied.features)} features"
    )


def parse_view_json(text: str) -> fs.FeatureView:
    """A FeatureView from its JSON form (see the module docstring); ValueError if malformed."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("expected one JSON object (a feature view)")
    defaults: dict[int, Any] = {}
    for i, feature in enumerate(doc.get("features") or []):
        if isinstance(feature, dict) and "default" in feature:
            defaults[i] = feature.pop("default")
    try:
        view = json_format.ParseDict(doc, fs.FeatureView())
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from None
    for i, value in defaults.items():
        feature = view.features[i]
        if feature.default_raw:
            raise ValueError(f"feature {feature.name!r}: give default or default_raw, not both")
        feature.default_raw = default_raw(feature, value)
    return view


def default_raw(feature: fs.Feature, value: Any) -> bytes:
    """A JSON default value as the raw bytes of one entity's value (V2 raw layout)."""
    shape, what = tuple(feature.shape), f"feature {feature.name!r} default"
    dtype = DTYPES.get(feature.datatype)
    if dtype is None or dtype.numpy is None:
        raise ValueError(f"{what}: unknown datatype {feature.datatype!r}")
    try:
        given = np.asarray(value, dtype=object if feature.datatype == "BYTES" else None)
        array = given if feature.datatype == "BYTES" else given.astype(dtype.numpy)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from None
    if array.shape != shape:
        raise ValueError(f"{what}: expected shape {list(shape)}, got {list(array.shape)}")
    if feature.datatype == "BYTES":
        return serialize_bytes_tensor(array)
    if given.dtype.kind not in "biuf" or not np.array_equal(given, array):
        raise ValueError(f"{what}: {value!r} is not exactly a {feature.datatype} value")
    return array.astype(dtype.numpy.newbyteorder("<")).tobytes()


async def _list(stub: Stub, fmt: str = "table") -> None:
    reply = await stub.ListFeatureViews(fs.ListFeatureViewsRequest(), timeout=TIMEOUT_S)
    states = []
    for v in reply.views:
        request = fs.GetMaterializationStateRequest(view=v.name)
        states.append(await stub.GetMaterializationState(request, timeout=TIMEOUT_S))
    if fmt == "json":
        output.print_json(
            {
                "views": [
                    {**output.as_json(v), "materialization": output.as_json(state)}
                    for v, state in zip(reply.views, states, strict=True)
                ]
            }
        )
        return
    for v, state in zip(reply.views, states, strict=True):
        ttl = f"{v.ttl_seconds}s" if v.ttl_seconds else "none"
        print(f"{v.name}  entity: {v.entity_key} {v.entity_type}  ttl: {ttl}")
        print("  features:", ", ".join(f"{f.name}:{f.datatype}{list(f.shape)}" for f in v.features))
        if v.HasField("source"):
            s = v.source
            created = s.created_timestamp_column and f", created {s.created_timestamp_column}"
            mark = _iso(state.watermark_unix_ms) if state.watermark_unix_ms else "never"
            print(
                f"  source: {s.format} {s.path or '-'} (event time {s.event_timestamp_column}"
                f"{created})  materialized up to: {mark}"
            )
        else:
            print("  source: none (pushed only)")


async def _get(
    stub: Stub, view_name: str, keys: list[str], features: list[str], fmt: str = "json"
) -> None:
    view = await stub.GetFeatureView(fs.GetFeatureViewRequest(name=view_name), timeout=TIMEOUT_S)
    request = fs.GetOnlineFeaturesRequest(view=view_name, features=features, entity_keys=keys)
    reply = await stub.GetOnlineFeatures(request, timeout=TIMEOUT_S)
    columns = [(r.values.name, from_proto_tensor(r.values), r.status) for r in reply.results]
    rows: list[dict[str, Any]] = [
        {
            view.entity_key: key,
            "status": {name: fs.ValueStatus.Name(status[i]) for name, _, status in columns},
            "values": {name: _json_value(values[i]) for name, values, _ in columns},
        }
        for i, key in enumerate(keys)
    ]
    if fmt == "json":
        print(json.dumps({"view": view.name, "rows": rows}, indent=2))
        return
    for row in rows:  # one line per key: each feature's value, its status when not PRESENT
        cells = [
            f"{name}={json.dumps(value)}"
            + ("" if row["status"][name] == "PRESENT" else f" ({row['status'][name]})")
            for name, value in row["values"].items()
        ]
        print(f"{row[view.entity_key]}  " + "  ".join(cells))


def _json_value(value: Any) -> Any:
    """Plain JSON: bytes as text when UTF-8 (else {"base64": ...}), NaN/inf as null."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
