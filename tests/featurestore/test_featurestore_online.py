"""Write and lookup semantics, the same tests against both backends (sqlite, redis)."""

from __future__ import annotations

import numpy as np
import pytest
from featurestore_testkit import now_ms, user_columns, user_view

from featurestore.catalog import ViewCatalog
from featurestore.online import OnlineFeatures, ValueStatus
from featurestore.online_store import OnlineStore
from featurestore.views import Feature, FeatureView
from modelserve.errors import InvalidArgumentError, NotFoundError

P, M, E = ValueStatus.PRESENT, ValueStatus.MISSING, ValueStatus.EXPIRED


async def test_written_rows_read_back(catalog: ViewCatalog, online: OnlineFeatures) -> None:
    await catalog.apply(user_view())
    keys = ["u0", "u1", "u2"]
    assert await online.write("users", keys, user_columns(3, base=10)) == 3

    score, counts, country = await online.read("users", [], ["u2", "u0"])
    np.testing.assert_array_equal(score.values, np.array([12, 10], dtype=np.float32))
    assert score.values.dtype == np.float32
    np.testing.assert_array_equal(counts.values, [[16, 17, 18], [10, 11, 12]])
    assert counts.values.shape == (2, 3)
    assert country.values.tolist() == [b"c10-2", b"c10-0"]
    for column in (score, counts, country):
        assert column.status.tolist() == [P, P]


async def test_unknown_keys_get_defaults_and_missing(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view())
    await online.write("users", ["u1"], user_columns(1, base=5))

    counts, score = await online.read("users", ["counts", "score"], ["nobody", "u1", "nobody"])
    assert [c.feature.name for c in (counts, score)] == ["counts", "score"]
    assert score.values.tolist() == [1.5, 5.0, 1.5]  # the declared default
    assert counts.values.tolist() == [[0, 0, 0], [5, 6, 7], [0, 0, 0]]  # zeros
    assert score.status.tolist() == [M, P, M]


async def test_old_events_read_as_expired(catalog: ViewCatalog, online: OnlineFeatures) -> None:
    await catalog.apply(user_view(ttl_seconds=1))
    now = now_ms()
    columns = user_columns(2, base=3)
    await online.write("users", ["old", "new"], columns, [now - 60_000, now])

    (score,) = await online.read("users", ["score"], ["old", "new", "none"])
    assert score.status.tolist() == [E, P, M]
    assert score.values.tolist() == [1.5, 4.0, 1.5]  # the expired value is not served


async def test_older_write_never_replaces_newer(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view())
    t = now_ms()
    assert await online.write("users", ["a", "b"], user_columns(2, base=100), [t, t]) == 2
    # "a" gets an older event (skipped), "b" a newer one (stored): only one row counts.
    assert await online.write("users", ["a", "b"], user_columns(2, base=0), [t - 1, t + 1]) == 1

    (score,) = await online.read("users", ["score"], ["a", "b"])
    assert score.values.tolist() == [100.0, 1.0]


async def test_equal_event_time_overwrites(catalog: ViewCatalog, online: OnlineFeatures) -> None:
    await catalog.apply(user_view())
    t = now_ms()
    await online.write("users", ["a"], user_columns(1, base=1), [t])
    assert await online.write("users", ["a"], user_columns(1, base=2), [t]) == 1
    (score,) = await online.read("users", ["score"], ["a"])
    assert score.values.tolist() == [2.0]


async def test_repeated_key_in_a_batch_keeps_the_newest(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view())
    t = now_ms()
    assert await online.write("users", ["a", "a", "a"], user_columns(3), [t, t + 5, t + 1]) == 1
    (score,) = await online.read("users", ["score"], ["a"])
    assert score.values.tolist() == [1.0]  # row 1 had the newest event


async def test_int64_keys_are_checked_and_canonical(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view(name="accounts", entity_type="INT64"))
    await online.write("accounts", ["7", "-12"], user_columns(2, base=1))

    (score,) = await online.read("accounts", ["score"], ["007", "-12", "8"])
    assert score.values.tolist() == [1.0, 2.0, 1.5]
    assert score.status.tolist() == [P, P, M]
    for bad in ["seven", "1.5", "", "99999999999999999999", " 7"]:
        with pytest.raises(InvalidArgumentError, match=f"entity key {bad!r}.*INT64 user_id"):
            await online.read("accounts", ["score"], ["1", bad])
    with pytest.raises(InvalidArgumentError, match="entity key 'x'"):
        await online.write("accounts", ["x"], user_columns(1))


async def test_rows_written_before_a_feature_was_added_read_it_as_missing(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view())
    await online.write("users", ["old"], user_columns(1, base=4))
    await catalog.apply(user_view(extra=(Feature("age", "INT32", (), b"\x09\x00\x00\x00"),)))

    score, age = await online.read("users", ["score", "age"], ["old"])
    assert (score.values.tolist(), score.status.tolist()) == ([4.0], [P])
    assert (age.values.tolist(), age.status.tolist()) == ([9], [M])


async def test_unknown_view_and_feature_are_not_found(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view())
    with pytest.raises(NotFoundError, match="'ghost' not found"):
        await online.read("ghost", [], ["a"])
    with pytest.raises(NotFoundError, match="has no feature 'height'"):
        await online.read("users", ["score", "height"], ["a"])
    with pytest.raises(NotFoundError, match="has no feature 'height'"):
        await online.write("users", ["a"], user_columns(1) | {"height": np.zeros(1, np.float32)})


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"score": np.zeros(2, np.float64)}, "feature 'score': expected FP32"),
        ({"score": np.zeros(3, np.float32)}, r"feature 'score': expected shape \[2\]"),
        ({"counts": np.zeros((2, 4), np.int64)}, r"feature 'counts': expected shape \[2, 3\]"),
        ({"country": np.zeros(2, np.int32)}, "feature 'country': expected BYTES"),
    ],
)
async def test_bad_columns_are_invalid(
    catalog: ViewCatalog, online: OnlineFeatures, change: dict[str, np.ndarray], needle: str
) -> None:
    await catalog.apply(user_view())
    with pytest.raises(InvalidArgumentError, match=needle):
        await online.write("users", ["a", "b"], user_columns(2) | change)
    (score,) = await online.read("users", ["score"], ["a", "b"])
    assert score.status.tolist() == [M, M]  # nothing was written


async def test_a_write_must_carry_every_feature(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view())
    columns = user_columns(1)
    del columns["counts"]
    with pytest.raises(InvalidArgumentError, match="every feature of the view; missing 'counts'"):
        await online.write("users", ["a"], columns)


async def test_event_times_are_checked(catalog: ViewCatalog, online: OnlineFeatures) -> None:
    await catalog.apply(user_view())
    with pytest.raises(InvalidArgumentError, match=r"one event time per entity key \(2\)"):
        await online.write("users", ["a", "b"], user_columns(2), [1])
    with pytest.raises(InvalidArgumentError, match="event time -1"):
        await online.write("users", ["a"], user_columns(1), [-1])


async def test_key_and_value_counts_are_bounded(
    catalog: ViewCatalog, online_store: OnlineStore
) -> None:
    small = OnlineFeatures(
        catalog=catalog, online_store=online_store, max_keys_per_call=3, max_values_per_call=8
    )
    await catalog.apply(user_view())
    with pytest.raises(InvalidArgumentError, match="4 entity keys in one call, at most 3"):
        await small.read("users", ["score"], ["a", "b", "c", "d"])
    with pytest.raises(InvalidArgumentError, match="4 entity keys in one call, at most 3"):
        await small.write("users", ["a", "b", "c", "d"], user_columns(4))
    # 3 keys x (1 + 3) elements = 12 values > 8
    with pytest.raises(InvalidArgumentError, match="would return 12 values, at most 8"):
        await small.read("users", ["score", "counts"], ["a", "b", "c"])
    assert len(await small.read("users", ["score"], ["a", "b", "c"])) == 1


async def test_ten_thousand_keys_in_one_call(catalog: ViewCatalog, online: OnlineFeatures) -> None:
    await catalog.apply(user_view())
    keys = [f"k{i}" for i in range(10_000)]
    assert await online.write("users", keys, user_columns(10_000)) == 10_000
    (score,) = await online.read("users", ["score"], keys)
    np.testing.assert_array_equal(score.values, np.arange(10_000, dtype=np.float32))
    assert set(score.status.tolist()) == {P}


async def test_every_datatype_round_trips(catalog: ViewCatalog, online: OnlineFeatures) -> None:
    features = (
        Feature("f64", "FP64", (2, 2)),
        Feature("i32", "INT32", (), b"\x07\x00\x00\x00"),
        Feature("flag", "BOOL", (3,), b"\x01\x00\x01"),
        Feature("tags", "BYTES", (2,), b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"),
    )
    await catalog.apply(FeatureView("mixed", "id", "STRING", features))
    tags = np.empty((2, 2), dtype=object)
    tags[:] = [[b"a", b""], ["\u00e9", b"\x00\xff"]]
    raw_flags = np.frombuffer(b"\x00\x02\x01\x01\x00\x00", dtype=np.bool_).reshape(2, 3)
    columns: dict[str, np.ndarray] = {
        "f64": np.arange(8, dtype=np.float64).reshape(2, 2, 2) / 3,
        "i32": np.array([-5, 2**31 - 1], dtype=np.int32),
        "flag": raw_flags,
        "tags": tags,
    }
    await online.write("mixed", ["a", "b"], columns)

    f64, i32, flag, tag = await online.read("mixed", [], ["a", "b", "c"])
    np.testing.assert_array_equal(f64.values[:2], columns["f64"])
    assert f64.values[2].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert i32.values.tolist() == [-5, 2**31 - 1, 7]
    assert flag.values.tolist() == [[False, True, True], [True, False, False], [True, False, True]]
    assert flag.values.view(np.uint8).max() == 1  # stored as canonical 0/1
    assert tag.values.tolist() == [[b"a", b""], ["\u00e9".encode(), b"\x00\xff"], [b"x", b"yz"]]
    assert tag.status.tolist() == [P, P, M]


async def test_a_feature_requested_twice_is_invalid(
    catalog: ViewCatalog, online: OnlineFeatures
) -> None:
    await catalog.apply(user_view())
    with pytest.raises(InvalidArgumentError, match="feature 'score' is requested twice"):
        await online.read("users", ["score", "counts", "score"], ["a"])
