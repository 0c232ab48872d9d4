"""Batch tests: one registry process for the session, with the two-input model and the
demo ``tabular`` model pushed; one Spark session (local[2]) shared by every Spark test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from batchsupport import TWO_IN, Registry, push, start_registry, two_input_model


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("batch-registry"))
    try:
        yield reg
    finally:
        reg.process.terminate()
        reg.process.wait(30)


@pytest.fixture(scope="session")
def two_in(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    """The two-input model as version 1 (label production) of TWO_IN."""
    model = two_input_model()
    path = tmp_path_factory.mktemp("batch-models") / "two_in.onnx"
    onnx.save(model, path)
    asyncio.run(push(registry.address, TWO_IN, path, labels=["production"]))
    return model


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    pyspark_sql = pytest.importorskip("pyspark.sql")
    from modelserve.cli.batch.spark_engine import session

    spark = session("local[2]", "modelserve-batch-tests")
    assert isinstance(spark, pyspark_sql.SparkSession)
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifact-cache"
