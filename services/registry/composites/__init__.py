"""Composite models in the registry: their store (validated against the models) and RPCs."""
