"""The top floor: the ``modelserve`` operator CLI and its client-side tools (optimize,
materialize, batch, up, demo models). The only code that names services; its client-only
dependencies (pyarrow, tqdm, quantization) are the ``cli`` extra service images do without."""

from modelserve.cli.main import main

__all__ = ["main"]
