"""Generate the Python code for protos/ into services/modelserve/proto/ (the only way it is made).

Usage: python scripts/gen_protos.py [--out DIR]

protoc writes imports like ``from inference import model_config_pb2``; those would resolve to
whatever top-level ``inference`` package is installed, so they are rewritten to
``from modelserve.proto.inference import ...``. .pyi stubs come from mypy-protobuf.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DEFAULT_OUT = ROOT / "services" / "modelserve" / "proto"
PACKAGE = "modelserve.proto"
TOP_LEVEL = ("inference", "modelserve")
IMPORT_RE = re.compile(rf"^(from|import) ({'|'.join(TOP_LEVEL)})(\.[\w.]+)? ", re.MULTILINE)


def _rewrite(text: str) -> str:
    def fix(m: re.Match[str]) -> str:
        return f"{m.group(1)} {PACKAGE}.{m.group(2)}{m.group(3) or ''} "

    return IMPORT_RE.sub(fix, text)


def generate(out: Path) -> None:
    from grpc_tools import protoc  # imported late: only the dev install has it

    # protoc finds mypy-protobuf's plugins on PATH; they live beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_dir():
                continue
            target = out / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_rewrite(path.read_text()))
    for folder in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").write_text("")
    (out / "__init__.py").write_text(
        '"""Generated from protos/ by scripts/gen_protos.py. Never edit by hand."""\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
