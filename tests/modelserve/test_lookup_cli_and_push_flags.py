"""Parsing of ``models push`` config flags and ``models push-lookup`` outputs (what reaches
the registry), and workers leaving lookup versions alone."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from modelserve.cli.lookup import parse_output
from modelserve.cli.options import Args, BadValue
from modelserve.cli.push_flags import (
    config_from_args,
    config_options,
    parse_feature_input,
    parse_output_labels,
)
from modelserve.proto.modelserve.v1 import registry_pb2
from worker.loader import deployed_versions


def push_args(*argv: str) -> Args:
    """What ``models push`` hands ``config_from_args`` for these flags (click parses them)."""

    @click.command()
    @config_options
    def push(**given: object) -> Args:
        return Args(**given)

    parsed: Args = push.main(list(argv), standalone_mode=False)
    return parsed


def test_no_flag_sends_no_config() -> None:
    assert config_from_args(push_args()) is None


def test_flags_fill_the_serving_config() -> None:
    config = config_from_args(
        push_args(
            "--max-batch-size",
            "8",
            "--preferred-batch-size",
            "2",
            "--preferred-batch-size",
            "4",
            "--prediction-cache-ttl",
            "5",
            "--feature-input",
            "x=v:a,b@user",
        )
    )
    assert config is not None
    assert config.max_batch_size == 8 and list(config.preferred_batch_sizes) == [2, 4]
    assert config.prediction_cache.enabled and config.prediction_cache.ttl_seconds == 5
    assert config.feature_inputs[0] == registry_pb2.FeatureInput(
        model_input="x", view="v", features=["a", "b"], entity_input="user"
    )


def test_a_feature_input_may_name_its_fail_open_row() -> None:
    assert parse_feature_input("x=v:a,b@user?fallback=0,-1.5") == registry_pb2.FeatureInput(
        model_input="x", view="v", features=["a", "b"], entity_input="user",
        fallback_values=[0.0, -1.5],
    )  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["x=v@user", "x=v:@user", "=v:a@user", "x:v:a", "x=v:a@u?fallback=", "x=v:a@u?fallback=z"],
)
def test_malformed_feature_inputs_are_refused(text: str) -> None:
    with pytest.raises(BadValue):
        parse_feature_input(text)


def test_lookup_outputs_parse_with_an_optional_feature() -> None:
    assert parse_output("score=FP32[1]") == registry_pb2.LookupOutput(
        name="score", datatype="FP32", shape=[1]
    )
    assert parse_output("probs:p=FP64[2, 3]") == registry_pb2.LookupOutput(
        name="probs", feature="p", datatype="FP64", shape=[2, 3]
    )
    with pytest.raises(BadValue):
        parse_output("score=FP32")


def test_workers_do_not_deploy_lookup_versions() -> None:
    model = registry_pb2.Model(
        name="m",
        versions=[
            registry_pb2.ModelVersion(model="m", version=1, platform="onnxruntime_onnx"),
            registry_pb2.ModelVersion(model="m", version=2, platform="lookup"),
        ],
        labels={"production": 1, "staging": 2},
    )
    assert set(deployed_versions({"m": model}, set())) == {("m", 1)}


def test_class_labels_flag_reads_one_label_per_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\n", encoding="utf-8")
    config = config_from_args(push_args("--class-labels", f"OUTPUT0={labels}"))
    assert config is not None
    [entry] = config.output_labels
    assert (entry.output, list(entry.labels)) == ("OUTPUT0", ["cat", "dog"])


@pytest.mark.parametrize("text", ["OUTPUT0", "=x.txt", "OUTPUT0=/no/such/file"])
def test_a_bad_class_labels_flag_is_refused(text: str) -> None:
    with pytest.raises(BadValue):
        parse_output_labels(text)
