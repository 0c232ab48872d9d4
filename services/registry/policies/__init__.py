"""Routing policies in the registry: their rules, the store methods and RPCs."""
