"""modelserve's floor: settings, server bootstrap, errors, interceptors, tracing, logging,
cross-service metrics, channels, the one outbound-call helper (``calls``), deadlines, storage,
discovery, the tensor codec and names. It knows no domain, no V2 face, no service and no CLI;
the catalog wing (``modelserve.catalog``), the V2 face (``modelserve.v2``), the services and
the CLI (``modelserve.cli``) build on it (tests/contracts/test_architecture.py)."""

__version__ = "0.1.0"
