"""Feature views: validation, evolution rules and the SQLite catalog."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from featurestore_testkit import user_view

from featurestore.catalog import ViewCatalog
from featurestore.views import Feature, FeatureView, view_from_json, view_to_json
from modelserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError


def test_default_values_follow_declaration() -> None:
    view = user_view()
    assert view.feature("score").default_value.tolist() == 1.5
    assert view.feature("counts").default_value.tolist() == [0, 0, 0]
    assert view.feature("country").default_value.tolist() == b""
    tags = Feature("tags", "BYTES", (2,), default_raw=b"\x01\x00\x00\x00a\x00\x00\x00\x00")
    assert tags.default_value.tolist() == [b"a", b""]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"datatype": "FP16"}, "datatype must be one of"),
        ({"shape": (0,)}, "each >= 1"),
        ({"shape": (2,) * 9}, "at most 8 dimensions"),
        ({"shape": (1024, 1024)}, "at most 65536 elements"),
        ({"default_raw": b"\x00\x00"}, "expected 4 bytes"),
        ({"name": "../etc"}, "invalid feature name"),
    ],
)
def test_bad_feature_is_refused(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"name": "f", "datatype": "FP32", "shape": ()} | kwargs
    with pytest.raises(InvalidArgumentError, match=needle):
        Feature(**args)  # type: ignore[arg-type]


def test_bad_bytes_default_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="default of feature 'tags'"):
        Feature("tags", "BYTES", (2,), default_raw=b"\x01\x00\x00\x00a")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"entity_type": "UUID"}, "entity_type must be STRING or INT64"),
        ({"features": ()}, "expected 1 to 1024 features"),
        ({"features": (Feature("a", "FP32"), Feature("a", "INT32"))}, "'a' is declared twice"),
        ({"ttl_seconds": -1}, "ttl_seconds must be 0"),
        ({"name": "a:b"}, "invalid feature view name"),
        ({"entity_key": ""}, "invalid entity key name"),
    ],
)
def test_bad_view_is_refused(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {
        "name": "v",
        "entity_key": "id",
        "entity_type": "STRING",
        "features": (Feature("a", "FP32"),),
    } | kwargs
    with pytest.raises(InvalidArgumentError, match=needle):
        FeatureView(**args)  # type: ignore[arg-type]


def test_unknown_feature_names_it() -> None:
    with pytest.raises(NotFoundError, match="has no feature 'nope'; it has score, counts"):
        user_view().feature("nope")


def test_json_round_trip_is_exact() -> None:
    view = user_view(ttl_seconds=60, extra=(Feature("emb", "FP64", (2, 2), b"\x01" * 32),))
    text = view_to_json(view)
    assert view_from_json(text) == view
    assert "pickle" not in text and text.startswith("{")


async def test_catalog_survives_reopening(db_path: Path) -> None:
    first = await ViewCatalog.open(db_path)
    await first.apply(user_view(ttl_seconds=30))
    await first.apply(user_view(name="items", entity_type="INT64"))
    await first.close()

    again = await ViewCatalog.open(db_path)
    try:
        assert [v.name for v in again.views()] == ["items", "users"]
        assert again.get("users") == user_view(ttl_seconds=30)
        assert again.get("items").entity_type == "INT64"
    finally:
        await again.close()


async def test_unknown_view_is_not_found(catalog: ViewCatalog) -> None:
    with pytest.raises(NotFoundError, match="feature view 'ghost' not found"):
        catalog.get("ghost")


async def test_adding_features_and_changing_ttl_is_allowed(catalog: ViewCatalog) -> None:
    await catalog.apply(user_view())
    grown = user_view(ttl_seconds=99, extra=(Feature("age", "INT32"),))
    assert await catalog.apply(grown) == grown
    assert catalog.get("users").feature_names[-1] == "age"


@pytest.mark.parametrize(
    ("changed", "needle"),
    [
        (Feature("score", "FP64"), r"feature 'score' cannot change from FP32 \[\] to FP64 \[\]"),
        (Feature("score", "FP32", (2,)), r"feature 'score' cannot change from FP32 \[\] to FP32"),
    ],
)
async def test_changing_a_feature_is_refused(
    catalog: ViewCatalog, changed: Feature, needle: str
) -> None:
    await catalog.apply(user_view())
    features = (changed, *user_view().features[1:])
    changed_view = FeatureView("users", "user_id", "STRING", features)
    with pytest.raises(FailedPreconditionError, match=needle):
        await catalog.apply(changed_view)
    assert catalog.get("users") == user_view()  # unchanged


async def test_changing_entity_type_or_removing_a_feature_is_refused(
    catalog: ViewCatalog,
) -> None:
    await catalog.apply(user_view())
    with pytest.raises(FailedPreconditionError, match="entity key cannot change"):
        await catalog.apply(user_view(entity_type="INT64"))
    fewer = FeatureView("users", "user_id", "STRING", user_view().features[:2])
    with pytest.raises(FailedPreconditionError, match="feature 'country' cannot be removed"):
        await catalog.apply(fewer)


async def test_changing_a_default_is_allowed_and_persisted(db_path: Path) -> None:
    catalog = await ViewCatalog.open(db_path)
    await catalog.apply(user_view())
    features = (Feature("score", "FP32", (), struct.pack("<f", -2.0)), *user_view().features[1:])
    await catalog.apply(FeatureView("users", "user_id", "STRING", features))
    await catalog.close()
    reopened = await ViewCatalog.open(db_path)
    try:
        default = reopened.get("users").feature("score").default_value
        np.testing.assert_array_equal(default, np.float32(-2.0))
    finally:
        await reopened.close()
