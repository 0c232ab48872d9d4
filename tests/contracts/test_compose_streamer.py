"""The streamer in docker-compose.yml passes the same checks as the five suite services
(tests/contracts/test_compose.py), which stays parametrized over the suite that `up` starts;
and it streams from the compose Redis."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import test_compose as compose

CHECKS = [
    compose.test_service_builds_the_project_image,
    compose.test_command_names_the_service_package,
    compose.test_environment_sets_only_real_settings,
    compose.test_environment_loads_into_container_settings,
    compose.test_container_ports_are_the_grpc_and_metrics_ports,
    compose.test_consul_is_the_compose_consul_and_up_first,
    compose.test_traces_go_to_a_compose_collector_on_otlp_grpc,
    compose.test_stop_grace_period_covers_drain_and_grace,
    compose.test_prometheus_scrapes_the_metrics_port,
]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_streamer_service(check) -> None:  # type: ignore[no-untyped-def]
    check("streamer")


def test_streamer_uses_the_compose_redis() -> None:
    settings = compose.settings_of("streamer")
    for url in (settings.stream_source, settings.stream_sink):  # type: ignore[attr-defined]
        parts = urlsplit(url)
        assert parts.scheme == "redis" and parts.hostname == "redis", url
    assert compose.depends_on(compose.service("streamer")).get("redis") == "service_healthy"
