"""T40 (a): the atheris harness bench/fuzz_infer.py. Every file of its checked-in corpus
(seeds, and any crash found, once fixed) is replayed through the harness's own target on every
run; a short coverage-guided run (2,000 executions from that corpus) runs where atheris is
installed. Long runs and their figures: docs/reliability-cases.md (T40)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "bench" / "fuzz_corpus" / "infer"
sys.path.insert(0, str(ROOT / "bench"))

import fuzz_infer  # noqa: E402


def test_the_corpus_replays_without_an_exception() -> None:
    files = sorted(CORPUS.iterdir())
    assert len(files) >= 8, files
    for path in files:
        fuzz_infer.one_input(path.read_bytes())


def test_the_seeds_cover_every_target_and_are_current(tmp_path: Path) -> None:
    fresh = fuzz_infer.seeds()
    assert {data[0] % fuzz_infer.TARGETS for data in fresh.values()} == {0, 1, 2, 3}
    for name, data in fresh.items():
        assert (CORPUS / name).read_bytes() == data, f"{name}: run --make-corpus again"


def test_a_short_coverage_guided_run_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)  # the run adds what it finds here, not to the repo
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz_infer.py"), str(corpus), "-runs=2000",
         "-max_len=4096"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done 2000 runs" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))
