"""Settings: flag > MODELSERVE_* > ecosystem variable > default, errors that name the variable,
fail-fast validation, a masked startup description and a docs table of every field."""

from __future__ import annotations

import dataclasses

import pytest

from featurestore import FeatureStoreSettings
from gateway import GatewaySettings
from modelserve.settings import (
    CommonSettings,
    SettingsError,
    describe,
    load_settings,
    settings_table,
)

# (field, ecosystem variable, a value for it, another value for MODELSERVE_<FIELD> or the flag)
ECOSYSTEM = [
    ("consul_addr", "CONSUL_HTTP_ADDR", "http://consul-a:8500", "http://consul-b:8500"),
    ("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "collector-a:4317", "collector-b:4317"),
    ("service_name", "OTEL_SERVICE_NAME", "svc-a", "svc-b"),
    ("trace_sample_ratio", "OTEL_TRACES_SAMPLER_ARG", "0.25", "0.75"),
]


def parsed(field_name: str, raw: str) -> object:
    return float(raw) if field_name == "trace_sample_ratio" else raw


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def test_defaults_come_from_the_service_class() -> None:
    s = load_settings(GatewaySettings, [], {})
    assert s.port == 8001  # the gateway's own default, not CommonSettings' 0
    assert s.router_addr == "127.0.0.1:8101"
    assert s.trace_sample_ratio == 1.0 and s.discovery == "static"
    fs = load_settings(FeatureStoreSettings, [], {})
    assert fs.port == 8401 and fs.online_store == "sqlite"


@pytest.mark.parametrize(("name", "eco", "a", "b"), ECOSYSTEM, ids=[e[1] for e in ECOSYSTEM])
def test_ecosystem_variable_is_honoured_below_modelserve_and_flags(
    name: str, eco: str, a: str, b: str
) -> None:
    prefixed = "MODELSERVE_" + name.upper()
    default = getattr(load_settings(GatewaySettings, [], {}), name)

    assert getattr(load_settings(GatewaySettings, [], {eco: a}), name) == parsed(name, a)
    both = {eco: a, prefixed: b}
    assert getattr(load_settings(GatewaySettings, [], both), name) == parsed(name, b)
    # An empty MODELSERVE_ variable counts as unset, so the ecosystem one still applies.
    empty = {eco: a, prefixed: ""}
    assert getattr(load_settings(GatewaySettings, [], empty), name) == parsed(name, a)
    chosen = getattr(load_settings(GatewaySettings, [flag(name), b], {eco: a}), name)
    assert chosen == parsed(name, b) != default


def test_flag_beats_environment_which_beats_default() -> None:
    env = {"MODELSERVE_PORT": "9100", "MODELSERVE_ROUTER_ADDR": "10.0.0.1:1,10.0.0.2:2"}
    from_env = load_settings(GatewaySettings, [], env)
    assert from_env.port == 9100
    assert from_env.router_addr == "10.0.0.1:1,10.0.0.2:2"

    from_flag = load_settings(GatewaySettings, ["--port", "9200", "--router-addr", "r:3"], env)
    assert from_flag.port == 9200 and from_flag.router_addr == "r:3"
    assert from_flag.registry_addr == "127.0.0.1:8301"  # untouched fields keep their default


def test_values_are_parsed_to_the_field_types() -> None:
    env = {
        "MODELSERVE_REFLECTION_ENABLED": "off",
        "MODELSERVE_DRAIN_SECONDS": "2.5",
        "MODELSERVE_MAX_CONCURRENT_RPCS": "64",
    }
    s = load_settings(GatewaySettings, ["--metrics-port", "-2"], env)
    assert s.reflection_enabled is False
    assert s.drain_seconds == 2.5
    assert s.max_concurrent_rpcs == 64
    assert s.metrics_port == -2 and s.resolved_metrics_port(5000) is None
    on = load_settings(GatewaySettings, ["--reflection-enabled", "YES"], env)
    assert on.reflection_enabled is True


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {"MODELSERVE_PORT": "eighty"}, "MODELSERVE_PORT"),
        (["--port", "eighty"], {}, "--port"),
        ([], {"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ([], {"MODELSERVE_REFLECTION_ENABLED": "maybe"}, "MODELSERVE_REFLECTION_ENABLED"),
        (["--drain-seconds", "soon"], {}, "--drain-seconds"),
    ],
)
def test_parse_errors_name_the_variable_and_the_value(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(FeatureStoreSettings, argv, env)
    message = str(info.value)
    assert named in message
    bad = argv[-1] if argv else next(iter(env.values()))
    assert repr(bad) in message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MODELSERVE_DISCOVERY": "etcd"}, "discovery"),
        ({"MODELSERVE_TRACE_EXPORTER": "jaeger"}, "trace_exporter"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "trace_exporter"),
        ({"MODELSERVE_TRACE_SAMPLE_RATIO": "1.5"}, "trace_sample_ratio"),
        ({"OTEL_TRACES_SAMPLER_ARG": "-0.1"}, "trace_sample_ratio"),
        ({"MODELSERVE_TRACE_SAMPLE_RATIO": "nan"}, "trace_sample_ratio"),
        ({"MODELSERVE_LOG_FORMAT": "xml"}, "log_format"),
        ({"MODELSERVE_ONLINE_STORE": "mongo"}, "online_store"),
    ],
)
def test_validation_rejects_impossible_values(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(FeatureStoreSettings, [], env)


@pytest.mark.parametrize("ratio", ["0", "1", "0.5"])
def test_validation_accepts_the_sample_ratio_bounds(ratio: str) -> None:
    s = load_settings(FeatureStoreSettings, [], {"OTEL_TRACES_SAMPLER_ARG": ratio})
    assert s.trace_sample_ratio == float(ratio)


def test_describe_masks_the_consul_token_and_shows_the_rest() -> None:
    secret = "s3cr3t-acl-token"
    s = load_settings(GatewaySettings, [], {"CONSUL_HTTP_TOKEN": secret})
    assert s.consul_token == secret
    shown = describe(s)
    assert shown["consul_token"] == "***"
    assert secret not in repr(shown)
    assert shown["port"] == 8001 and shown["router_addr"] == "127.0.0.1:8101"
    assert set(shown) == {f.name for f in dataclasses.fields(GatewaySettings)}
    # An unset secret is shown as empty, so the log says it is missing.
    assert describe(load_settings(GatewaySettings, [], {}))["consul_token"] == ""


@pytest.mark.parametrize("cls", [GatewaySettings, FeatureStoreSettings])
def test_settings_table_has_one_row_per_field(cls: type[CommonSettings]) -> None:
    lines = settings_table(cls).splitlines()
    fields = dataclasses.fields(cls)
    assert len(lines) == 2 + len(fields)
    for f, row in zip(fields, lines[2:], strict=True):
        assert f"`MODELSERVE_{f.name.upper()}`" in row
        assert f"`{flag(f.name)}`" in row
        assert f"`{f.default!r}`" in row
        assert f.metadata["help"] in row
    consul_row = next(r for r in lines if "`--consul-addr`" in r)
    assert "`CONSUL_HTTP_ADDR`" in consul_row
