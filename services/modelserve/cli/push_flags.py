"""``modelserve models push`` flags for the version's ServingConfig.

Flags left out stay unset in the pushed ServingConfig, so the registry applies its defaults
(proto3 zero = "not given", see registry/convert.py). The registry validates the values; this
module only parses what a person typed into the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from modelserve.cli.options import Args, BadValue, Parsed
from modelserve.proto.modelserve.v1 import registry_pb2

F = TypeVar("F", bound=Callable[..., Any])

# MODEL_INPUT=VIEW:f1,f2,f3@ENTITY_INPUT
_FEATURE_INPUT = re.compile(r"^([^=]+)=([^:]+):([^@]+)@([^?]+)(?:\?fallback=(.*))?$")


def config_options(command: F) -> F:
    """The serving-config options of ``models push`` (unset ones take the registry's
    defaults); the command receives them as keyword arguments for ``config_from_args``."""
    options = [
        click.option("--max-batch-size", type=int, help="largest batch the worker forms"),
        click.option("--max-queue-delay-us", type=int, help="batcher wait for more rows"),
        click.option("--preferred-batch-size", type=int, multiple=True,
                     help="a batch size the batcher prefers (repeatable)"),
        click.option("--max-queue-size", type=int,
                     help="rows queued before RESOURCE_EXHAUSTED"),
        click.option("--instances", type=int, help="ONNX Runtime sessions per worker"),
        click.option("--execution-provider", type=click.Choice(("auto", "cpu", "cuda"))),
        click.option("--prediction-cache-ttl", type=int, metavar="SECONDS",
                     help="enable the router's prediction cache with this TTL"),
        click.option("--feature-input", multiple=True,
                     type=Parsed(parse_feature_input,
                                 "MODEL_INPUT=VIEW:F1,F2@ENTITY_INPUT[?fallback=V1,V2,...]"),
                     help="fill MODEL_INPUT from VIEW's features keyed by ENTITY_INPUT "
                     "(repeatable); with ?fallback= the input's width of values served when "
                     "the feature store cannot answer (fail open; without: UNAVAILABLE)"),
        click.option("--class-labels", multiple=True,
                     type=Parsed(parse_output_labels, "OUTPUT=FILE"),
                     help="class labels of OUTPUT for classification answers, one per line like "
                     "Triton's label_filename (line i names class index i; repeatable)"),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def parse_feature_input(text: str) -> registry_pb2.FeatureInput:
    match = _FEATURE_INPUT.match(text.strip())
    if match is None:
        raise BadValue(
            f"expected MODEL_INPUT=VIEW:f1,f2@ENTITY_INPUT[?fallback=v1,v2]; got {text!r}"
        )
    model_input, view, features, entity = (g.strip() for g in match.groups()[:4])
    names = [f.strip() for f in features.split(",") if f.strip()]
    if not names:
        raise BadValue(f"no features listed in {text!r}")
    fallback = match.group(5)
    try:
        values = [float(v) for v in fallback.split(",")] if fallback is not None else []
    except ValueError:
        raise BadValue(f"fallback values must be numbers; got {fallback!r}") from None
    return registry_pb2.FeatureInput(
        model_input=model_input,
        view=view,
        features=names,
        entity_input=entity,
        fallback_values=values,
    )


def parse_output_labels(text: str) -> registry_pb2.OutputLabels:
    output, sep, file = text.partition("=")
    if not sep or not output.strip() or not file.strip():
        raise BadValue(f"expected OUTPUT=FILE; got {text!r}")
    try:
        lines = Path(file.strip()).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadValue(f"cannot read labels file {file!r}: {exc}") from exc
    # Triton reads one label per line; trailing blank lines are not classes.
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise BadValue(f"labels file {file!r} holds no labels")
    return registry_pb2.OutputLabels(output=output.strip(), labels=lines)


def config_from_args(args: Args) -> registry_pb2.ServingConfig | None:
    """The ServingConfig the flags describe; None when no flag was given."""
    config = registry_pb2.ServingConfig(
        max_batch_size=args.max_batch_size or 0,
        max_queue_delay_us=args.max_queue_delay_us or 0,
        preferred_batch_sizes=list(args.preferred_batch_size),
        max_queue_size=args.max_queue_size or 0,
        instance_count=args.instances or 0,
        execution_provider=args.execution_provider or "",
        feature_inputs=list(args.feature_input),
        output_labels=list(getattr(args, "class_labels", ())),
    )
    if args.prediction_cache_ttl is not None:
        config.prediction_cache.enabled = True
        config.prediction_cache.ttl_seconds = args.prediction_cache_ttl
    return config if config.ByteSize() else None
