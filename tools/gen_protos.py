"""Regenerate the checked-in Python code for protos/ (the only writer of bertrec/v1/*_pb2*.py).

Usage: python tools/gen_protos.py [--check]
--check regenerates into a temporary folder and exits 1 when the checked-in code differs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GENERATED_DIR = ROOT / "bertrec" / "v1"
GRPCIO_TOOLS_VERSION = "1.85.1"  # pinned: generated code differs between releases


def _generate(out_root: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "bertrec" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    from importlib.metadata import version

    installed = version("grpcio-tools")
    if installed != GRPCIO_TOOLS_VERSION:
        print(f"grpcio-tools {installed} installed, {GRPCIO_TOOLS_VERSION} pinned", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
        if args.check:
            stale = [
                p.name
                for p in generated
                if not (GENERATED_DIR / p.name).exists() or not filecmp.cmp(p, GENERATED_DIR / p.name, shallow=False)
            ]
            if stale:
                print("generated protobuf code is stale: " + ", ".join(stale), file=sys.stderr)
                print("run: python tools/gen_protos.py", file=sys.stderr)
                return 1
            print("generated protobuf code is up to date")
            return 0
        GENERATED_DIR.mkdir(parents=True, exist_ok=True)
        for p in generated:
            shutil.copy(p, GENERATED_DIR / p.name)
            print(f"wrote {GENERATED_DIR / p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
