"""Session fixtures shared by every test: the demo model files."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserve.cli.demo_models import write_demo_models


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo-models")
    write_demo_models(directory)
    return directory
