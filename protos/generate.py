"""Generate MedLedger's Python protobuf, gRPC and type-stub modules from protos/.

The .proto files are the single source of truth; the output in services/v1/
(importable as ``medledger.v1``) is generated and never edited by hand.
``python protos/generate.py [OUT_DIR]`` writes to OUT_DIR (default services/v1);
the staleness test generates into a temporary directory and compares.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "medledger" / "v1"
DEFAULT_OUT = PROTO_ROOT.parent / "services" / "v1"
HEADER_INIT = '"""Generated from protos/medledger/v1 by `make protos`. Do not edit."""\n'


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write generated modules for every proto into out_dir; return the files written."""
    import grpc_tools

    # The mypy-protobuf plugins live beside the interpreter (the venv's bin/).
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={scratch}",
            f"--grpc_python_out={scratch}",
            f"--mypy_out={scratch}",
            f"--mypy_grpc_out={scratch}",
            *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = Path(scratch) / "medledger" / "v1"
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*_pb2*"):
            old.unlink()
        written = []
        for src in sorted(produced.iterdir()):
            dest = out_dir / src.name
            shutil.copyfile(src, dest)
            written.append(dest)
        init = out_dir / "__init__.py"
        init.write_text(HEADER_INIT)
        (out_dir / "py.typed").write_text("")
        written += [init, out_dir / "py.typed"]
        return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    files = generate(target)
    print(f"generated {len(files)} files into {target}")
