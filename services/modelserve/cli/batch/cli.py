"""``modelserve batch run`` and ``modelserve batch rollback`` (docs/batch.md)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import click
import grpc

from modelserve.cli.options import Args, address, client

if TYPE_CHECKING:
    from modelserve.cli.batch.job import RunOptions

# Literal here so that `modelserve --help` does not import pyarrow; job.py checks them too.
ENGINES = ("local", "spark")
FORMATS = ("parquet", "csv")
NAN_POLICIES = ("error", "pass")
DEFAULT_BATCH_ROWS = 4096  # rows per ONNX Runtime run; reads are sized apart (parts.py)
DEFAULT_PART_ROWS = 262_144


@click.group("batch", help="batch inference: data lake -> model -> Parquet (-> lookup)")
def group() -> None:
    pass


def _addresses(ctx: click.Context, args: Args) -> Args:
    client(ctx)
    args.registry = address(ctx, "registry")
    args.featurestore = address(ctx, "featurestore")
    return args


@group.command("run", help="score a Parquet/CSV dataset with MODEL[:VERSION|@LABEL]")
@click.argument("model")
@click.option("--input", required=True, help="Parquet/CSV file, directory or glob")
@click.option("--output", required=True, help="the Parquet dataset directory to create")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True)
@click.option(
    "--master", default="local[*]", show_default=True, help="Spark master (spark://, yarn, k8s://)"
)
@click.option("--key-column", multiple=True, help="copied to the output")
@click.option("--input-map", multiple=True, metavar="INPUT=col1,col2|INPUT=array_col")
@click.option("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, show_default=True)
@click.option(
    "--part-rows", type=int, default=DEFAULT_PART_ROWS, show_default=True, help="rows per part"
)
@click.option("--run-id", default="", help="re-run an unfinished run by its id")
@click.option("--publish-lookup", default="", metavar="NAME")
@click.option("--input-format", type=click.Choice(FORMATS), default=None)
@click.option("--nan-policy", type=click.Choice(NAN_POLICIES), default="error", show_default=True)
@click.option("--workers", type=int, default=0, help="local engine executors (0: cores)")
@click.option("--cache-dir", default="", help="artifact cache (MODELSERVE_BATCH_CACHE_DIR)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--no-progress", is_flag=True)
@click.pass_context
def run_command(ctx: click.Context, as_json: bool, key_column: tuple[str, ...],
                input_map: tuple[str, ...], **given: Any) -> int:  # fmt: skip
    args = Args(batch_command="run", json=as_json, key_column=list(key_column),
                input_map=list(input_map), **given)  # fmt: skip
    return run(_addresses(ctx, args))


@group.command("rollback", help="point lookup model NAME at its previous generation")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollback_command(ctx: click.Context, name: str, as_json: bool) -> int:
    return run(_addresses(ctx, Args(batch_command="rollback", name=name, json=as_json)))


def run(args: Args) -> int:
    from modelserve.cli.batch.columns import BatchInputError
    from modelserve.cli.batch.job import run_batch, summary_line

    try:
        if args.batch_command == "rollback":
            from modelserve.cli.batch.generations import rollback

            result = asyncio.run(rollback(args.registry, args.name, args.featurestore))
            print(
                json.dumps(result)
                if args.json
                else f"{result['lookup_model']}: production -> version {result['to_version']} "
                f"(was {result['from_version']})"
            )
            return 0
        summary = run_batch(_options(args))
    except BatchInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True) if args.json else summary_line(summary))
    return 0


def _options(args: Args) -> RunOptions:
    from modelserve.cli.batch.job import RunOptions

    return RunOptions(
        model=args.model,
        input=args.input,
        output=args.output,
        engine=args.engine,
        master=args.master,
        key_columns=args.key_column,
        input_map=args.input_map,
        batch_rows=args.batch_rows,
        run_id=args.run_id,
        publish_lookup=args.publish_lookup,
        registry=args.registry,
        featurestore=args.featurestore,
        input_format=args.input_format or "",
        nan_policy=args.nan_policy,
        workers=args.workers,
        part_rows=args.part_rows,
        cache_dir=args.cache_dir,
        progress=False if args.no_progress else None,
    )
