"""modelserve's thin shared runtime: settings, server bootstrap, errors, tracing, discovery,
channels and the tensor codec. Services depend on it; it never imports a service."""

__version__ = "0.1.0"
