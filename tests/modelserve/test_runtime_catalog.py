"""Version resolution (numeric version, label, production default, newest) and the local
catalog replica applying the registry's Watch events."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest

from modelserve.catalog.replica import Catalog, resolve_version
from modelserve.discovery.static import StaticDiscovery
from modelserve.errors import InvalidArgumentError, ModelServeError, NotFoundError
from modelserve.proto.modelserve.v1 import registry_pb2


def model(
    name: str, versions: list[int], labels: dict[str, int] | None = None
) -> registry_pb2.Model:
    return registry_pb2.Model(
        name=name,
        versions=[
            registry_pb2.ModelVersion(model=name, version=v, sha256=f"{name}-{v}") for v in versions
        ],
        labels=labels or {},
    )


FRAUD = model("fraud", [1, 2, 3], {"production": 1, "staging": 3})


def test_numeric_version_selects_that_version() -> None:
    assert resolve_version(FRAUD, "2").version == 2
    assert resolve_version(FRAUD, "3", label="production").version == 3  # number wins


def test_label_selects_through_the_version_string_or_the_label_argument() -> None:
    assert resolve_version(FRAUD, "staging").version == 3
    assert resolve_version(FRAUD, label="staging").version == 3
    assert resolve_version(FRAUD, label="production").version == 1


def test_neither_selects_production_label() -> None:
    assert resolve_version(FRAUD).version == 1


def test_without_production_label_the_newest_version_answers() -> None:
    unlabelled = model("m", [3, 7, 5], {"staging": 3})
    assert resolve_version(unlabelled).version == 7


def test_unknown_version_is_not_found_and_lists_the_versions() -> None:
    with pytest.raises(NotFoundError) as info:
        resolve_version(FRAUD, "9")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "fraud" in info.value.message
    assert "no version 9" in info.value.message
    assert "1, 2, 3" in info.value.message


def test_unknown_label_is_not_found_and_lists_the_labels() -> None:
    with pytest.raises(NotFoundError) as info:
        resolve_version(FRAUD, label="canary")
    assert "no label 'canary'" in info.value.message
    assert "production, staging" in info.value.message
    with pytest.raises(NotFoundError, match="labels: none"):
        resolve_version(model("bare", [1]), "canary")


def test_model_without_versions_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="'empty' has no versions"):
        resolve_version(model("empty", []))
    with pytest.raises(NotFoundError, match=r"versions: none"):
        resolve_version(model("empty", []), "1")


@pytest.mark.parametrize("label", ["../prod", "-1", "a b", "x" * 129, "."])
def test_invalid_label_name_is_invalid_argument(label: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        resolve_version(FRAUD, label=label)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid label" in info.value.message
    with pytest.raises(InvalidArgumentError):
        resolve_version(FRAUD, label)  # the same through the version string


def test_non_ascii_digit_version_is_a_client_error() -> None:
    with pytest.raises(ModelServeError) as info:
        resolve_version(FRAUD, "²")
    assert info.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def event(
    revision: int,
    models: Sequence[registry_pb2.Model] = (),
    deleted: Sequence[str] = (),
    snapshot: bool = False,
) -> registry_pb2.WatchEvent:
    return registry_pb2.WatchEvent(
        revision=revision, snapshot=snapshot, models=list(models), deleted=list(deleted)
    )


def new_catalog() -> tuple[Catalog, list[set[str]]]:
    catalog = Catalog(StaticDiscovery({}))
    seen: list[set[str]] = []
    catalog.on_change(seen.append)
    return catalog, seen


async def test_snapshot_fills_the_catalog_and_sets_synced() -> None:
    catalog, seen = new_catalog()
    assert not catalog.synced.is_set()
    catalog.apply(event(4, [FRAUD, model("tabular", [1])], snapshot=True))
    assert catalog.synced.is_set()
    assert set(catalog.models) == {"fraud", "tabular"}
    assert catalog.revision == 4
    assert seen == [{"fraud", "tabular"}]
    assert catalog.resolve("fraud").version == 1
    assert catalog.resolve("fraud", "staging").version == 3


async def test_a_delta_before_any_snapshot_does_not_set_synced() -> None:
    catalog, _ = new_catalog()
    catalog.apply(event(1, [FRAUD]))
    assert not catalog.synced.is_set()
    assert "fraud" in catalog.models


async def test_deltas_update_and_delete_models() -> None:
    catalog, seen = new_catalog()
    catalog.apply(event(1, [FRAUD, model("tabular", [1])], snapshot=True))

    moved = model("fraud", [1, 2, 3], {"production": 2})
    catalog.apply(event(2, [moved]))
    assert catalog.resolve("fraud").version == 2
    assert catalog.models["tabular"].versions[0].version == 1  # untouched by the delta

    catalog.apply(event(3, deleted=["tabular"]))
    assert set(catalog.models) == {"fraud"}
    assert catalog.revision == 3
    assert seen[1:] == [{"fraud"}, {"tabular"}]
    with pytest.raises(NotFoundError, match="unknown model 'tabular'"):
        catalog.resolve("tabular")


async def test_a_new_snapshot_replaces_everything_and_reports_what_vanished() -> None:
    catalog, seen = new_catalog()
    catalog.apply(event(1, [FRAUD, model("old", [1])], snapshot=True))
    catalog.apply(event(9, [model("fresh", [2])], snapshot=True))
    assert set(catalog.models) == {"fresh"}
    assert seen[-1] == {"fraud", "old", "fresh"}
    with pytest.raises(NotFoundError):
        catalog.get_model("old")


async def test_a_failing_listener_does_not_stop_the_others_or_the_update() -> None:
    catalog = Catalog(StaticDiscovery({}))
    seen: list[set[str]] = []

    def broken(_: set[str]) -> None:
        raise RuntimeError("listener bug")

    catalog.on_change(broken)
    catalog.on_change(seen.append)
    catalog.apply(event(1, [FRAUD], snapshot=True))
    assert seen == [{"fraud"}]
    assert catalog.synced.is_set() and "fraud" in catalog.models


async def test_unknown_or_invalid_model_names() -> None:
    catalog, _ = new_catalog()
    catalog.apply(event(1, [FRAUD], snapshot=True))
    with pytest.raises(NotFoundError):
        catalog.get_model("nope")
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        catalog.get_model("../etc/passwd")
