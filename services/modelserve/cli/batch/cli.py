"""``modelserve batch run`` and ``modelserve batch rollback`` (docs/batch.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from modelserve.cli.batch.job import RunOptions

# Literal here so that `modelserve --help` does not import pyarrow; job.py checks them too.
ENGINES = ("local", "spark")
FORMATS = ("parquet", "csv")
NAN_POLICIES = ("error", "pass")
DEFAULT_BATCH_ROWS = 65_536
DEFAULT_PART_ROWS = 262_144
DEFAULT_REGISTRY = "127.0.0.1:8301"
DEFAULT_FEATURESTORE = "127.0.0.1:8401"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    batch = sub.add_parser(
        "batch", help="batch inference: data lake -> model -> Parquet (-> lookup)"
    )
    bsub = batch.add_subparsers(dest="batch_command", required=True)
    run = bsub.add_parser("run", help="score a Parquet/CSV dataset with MODEL[:VERSION|@LABEL]")
    run.add_argument("model", help="MODEL, MODEL:VERSION or MODEL@LABEL, resolved as online")
    run.add_argument("--input", required=True, help="Parquet/CSV file, directory or glob")
    run.add_argument("--output", required=True, help="the Parquet dataset directory to create")
    run.add_argument("--engine", choices=ENGINES, default="local")
    run.add_argument("--master", default="local[*]", help="Spark master (spark://, yarn, k8s://)")
    run.add_argument("--key-column", action="append", default=[], help="copied to the output")
    run.add_argument(
        "--input-map", action="append", default=[], metavar="INPUT=col1,col2|INPUT=array_col"
    )
    run.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    run.add_argument("--part-rows", type=int, default=DEFAULT_PART_ROWS, help="rows per part")
    run.add_argument("--run-id", default="", help="re-run an unfinished run by its id")
    run.add_argument("--publish-lookup", default="", metavar="NAME")
    run.add_argument("--input-format", choices=FORMATS, default=None)
    run.add_argument("--nan-policy", choices=NAN_POLICIES, default="error")
    run.add_argument("--workers", type=int, default=0, help="local engine processes (0: cores)")
    run.add_argument("--cache-dir", default="", help="artifact cache (MODELSERVE_BATCH_CACHE_DIR)")
    run.add_argument("--registry", default=DEFAULT_REGISTRY)
    run.add_argument("--featurestore", default=DEFAULT_FEATURESTORE)
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--no-progress", action="store_true")
    rb = bsub.add_parser("rollback", help="point lookup model NAME at its previous generation")
    rb.add_argument("name")
    rb.add_argument("--registry", default=DEFAULT_REGISTRY)
    rb.add_argument("--featurestore", default=DEFAULT_FEATURESTORE)
    rb.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
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


def _options(args: argparse.Namespace) -> RunOptions:
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
