"""Batch inference: a data lake (Parquet/CSV) through a registered model into a Parquet
prediction dataset, on the embedded local engine or on Spark, optionally published into the
feature store for lookup serving (docs/batch.md).

Modules by role: ``cli`` (the ``modelserve batch`` commands), ``resolve`` (the model through
the registry, its artifact fetched and verified), ``columns`` (input columns -> model inputs,
outputs -> columns), ``sources`` (datasets split into parts), ``scoring`` (the ONE adapter to
the worker's ONNX Runtime session code), ``parts`` (scoring one part), ``commit`` (the staging
/ manifest / _SUCCESS protocol), ``local_engine`` and ``spark_engine``, ``publish`` (a run
into the online store, the switch) and ``generations`` (which is live, expiry, rollback).
"""
