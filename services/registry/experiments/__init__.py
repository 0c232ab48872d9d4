"""A/B experiments: their rules, always-valid statistics, store and RPCs."""
