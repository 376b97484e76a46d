"""The SDK must import with only grpcio and protobuf: no torch, Ray, FAISS or numpy."""

import subprocess
import sys

HEAVY = ("torch", "ray", "faiss", "numpy", "transformers")


def test_client_import_loads_no_heavy_module():
    code = (
        "import sys, bertrec.client\n"
        "from bertrec.client import Client, AsyncClient\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
