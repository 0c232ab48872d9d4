"""SQLite rows <-> domain records: signatures and configs as JSON text, nothing executable."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from modelserve.tensors import TensorSpec
from registry import lookup_models
from registry.config import OutputLabels, ServingConfig
from registry.db import Row
from registry.enrichment_config import FeatureInput, PredictionCacheConfig
from registry.records import VersionRecord


def specs_to_json(specs: Sequence[TensorSpec]) -> str:
    return json.dumps(
        [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]
    )


def specs_from_json(text: str) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name=item["name"], datatype=item["datatype"], shape=tuple(item["shape"]))
        for item in json.loads(text)
    )


def config_to_json(config: ServingConfig) -> str:
    data = asdict(config)
    data["preferred_batch_sizes"] = list(config.preferred_batch_sizes)
    data["feature_inputs"] = [
        {**asdict(fi), "features": list(fi.features), "fallback_values": list(fi.fallback_values)}
        for fi in config.feature_inputs
    ]
    data["lookup"] = lookup_models.to_json(config.lookup) if config.lookup else None
    data["output_labels"] = [
        {"output": o.output, "labels": list(o.labels)} for o in config.output_labels
    ]
    return json.dumps(data, sort_keys=True)


def config_from_json(text: str) -> ServingConfig:
    """Configs written before a field existed lack its key and read as its default, so
    databases from older builds stay readable without a schema migration."""
    data: dict[str, Any] = json.loads(text)
    data["preferred_batch_sizes"] = tuple(data.get("preferred_batch_sizes", ()))
    data["feature_inputs"] = tuple(
        FeatureInput(
            **{
                **item,
                "features": tuple(item["features"]),
                "fallback_values": tuple(item.get("fallback_values", ())),
            }
        )
        for item in data.get("feature_inputs", ())
    )
    data["prediction_cache"] = PredictionCacheConfig(**data.get("prediction_cache", {}))
    lookup = data.get("lookup")
    data["lookup"] = lookup_models.from_json(lookup) if lookup else None
    data["output_labels"] = tuple(
        OutputLabels(output=item["output"], labels=tuple(item["labels"]))
        for item in data.get("output_labels", ())
    )
    return ServingConfig(**data)


def version_from_row(row: Row, labels: Sequence[str]) -> VersionRecord:
    return VersionRecord(
        model=row["model"],
        version=row["version"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        inputs=specs_from_json(row["inputs_json"]),
        outputs=specs_from_json(row["outputs_json"]),
        config=config_from_json(row["config_json"]),
        platform=row["platform"],
        created_unix_ms=row["created_unix_ms"],
        description=row["description"],
        parent_version=row["parent_version"],
        labels=tuple(sorted(labels)),
        artifact_uri=row["artifact_uri"],
    )
