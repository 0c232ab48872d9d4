"""Canary releases: the spec and its gates, the controller that steps them, their store and RPCs."""
