"""CPU runtimes over a checkpoint exported once to ONNX: ONNX Runtime (fp32), OpenVINO (bf16, and
int8 after workers/int8_model.py quantized the export).

Same weights, same arithmetic as torch (fp32 hidden states agree to ~1e-4, vectors to cosine
0.99999), at a lower fixed cost per forward pass: both run one pre-planned graph in C++ where
eager torch dispatches each of a BERT's few hundred small ops from Python. That fixed cost is
most of the price of the small batches a replica forms from single-text requests
(BENCHMARKS.md, "Encode through the service" and "Cheaper CPU replicas").

The export (torch.export -> ONNX, several seconds) is cached on disk, keyed on the checkpoint's
files and the library versions, so replicas and restarts after the first load it in ~0.2 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bertrec.fingerprint import model_fingerprint

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the exported graph changes (inputs, outputs, export options)
# Exports kept per cache folder (~90 MB each for a MiniLM): every fine-tuned checkpoint adds one,
# so the least recently used beyond this go, once they are an hour old.
KEEP_EXPORTS = 8
# ONNX Runtime fuses each residual Add + LayerNorm into one SkipLayerNormalization kernel, which on
# one thread took 8x the time of the two ops it replaces (660 ms vs 80 ms of a 6.9 s profile):
# without that fusion a forward pass is ~9% faster at every batch size (BENCHMARKS.md). Measured
# with onnxruntime 1.30 on an AMD EPYC with AVX-512; on another CPU or release, recheck (time a
# session with and without this list) before keeping it.
DISABLED_ORT_FUSIONS = ["SkipLayerNormFusion"]
PRUNE_AFTER_S = 3600


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bertrec" / "onnx"


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_key(model_path: str) -> str:
    """The cache key of an export: the checkpoint's files plus the versions that shape the graph."""
    import torch
    import transformers

    return f"{model_fingerprint(model_path)}-t{torch.__version__}-hf{transformers.__version__}-f{EXPORT_FORMAT}"


def exported_model(model_path: str, input_names: list[str], cache_dir: str | Path = "") -> Path:
    """The checkpoint as ONNX (last_hidden_state from the tokenizer's inputs), exported on first use.

    Replicas starting together take a file lock, so one exports and the others load its file;
    the file appears by an atomic rename, so a crash mid-export leaves no half-written model.
    """
    folder = Path(cache_dir or default_cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{export_key(model_path)}.onnx"
    return made_once(target, lambda: _export(model_path, input_names, target), lambda: prune_exports(folder))


def made_once(target: Path, make: Callable[[], None], prune: Callable[[], object]) -> Path:
    """`target` from the cache, or made by `make` (which must create it by an atomic rename) and
    then `prune` run. Processes starting together take a file lock beside it, so one makes the
    file and the others use it."""
    with contextlib.suppress(FileNotFoundError):  # absent, or pruned just now: made below
        os.utime(target)  # recently used: kept by prune_exports
        return target
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            make()
            prune()
    return target


def prune_exports(
    folder: Path,
    keep: int = KEEP_EXPORTS,
    older_than_s: float = PRUNE_AFTER_S,
    pattern: str = "*.onnx",
    remove: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Delete the least recently used exports (files matching `pattern`, each with `remove`)
    beyond `keep` that are older than `older_than_s`."""
    exports = sorted(folder.glob(pattern), key=lambda f: f.stat().st_mtime, reverse=True)
    now = time.time()
    removed = []
    for stale in exports[keep:]:
        if now - stale.stat().st_mtime > older_than_s:
            (remove or _remove_export)(stale)
            removed.append(stale)
    return removed


def _remove_export(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}.lock").unlink(missing_ok=True)


def _export(model_path: str, input_names: list[str], target: Path) -> None:
    import torch
    from transformers import AutoModel

    logger.info("exporting %s to ONNX (once per checkpoint; cached in %s)", model_path, target.parent)
    # Eager attention: plain MatMul/Softmax ops that the exporter maps one to one. A fresh model,
    # because exporting leaves the module it traces unfit for further use.
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager", dtype=torch.float32).eval()
    graph = _hidden_states_module(model, input_names).eval()
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in input_names)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with _quiet_exporter():
        program = torch.onnx.export(
            graph,
            example,
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_shapes=(tuple({0: batch, 1: length} for _ in input_names),),  # one entry: *inputs
            dynamo=True,
            optimize=True,
            verbose=False,
        )
        program.save(str(tmp))
    os.replace(tmp, target)


def _hidden_states_module(model, input_names: list[str]):
    """A module taking the tokenizer's inputs positionally and returning last_hidden_state (what
    the exporter traces)."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(input_names, inputs, strict=True))).last_hidden_state

    return HiddenStates()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines and notices (torchvision absent, deprecations) are noise in
    a replica's log; its errors still raise."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "torch._export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnx_session(onnx_path: Path, threads: int, optimized_model_path: str = ""):
    """A CPU ONNX Runtime session as replicas run it; `optimized_model_path` also saves the graph
    as optimised for this machine (to see which fusions applied)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads spinning for work would take CPU from the front end and the other
    # replicas on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    return ort.InferenceSession(
        str(onnx_path), options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_ORT_FUSIONS
    )


class OnnxHiddenStates:
    """An ONNX Runtime session over an exported checkpoint: padded numpy batch -> hidden states."""

    def __init__(self, onnx_path: Path, threads: int):
        self.session = onnx_session(onnx_path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {name: batch[name] for name in self.input_names})[0]


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoHiddenStates:
    """OpenVINO over the same exported graph, for bf16 CPU replicas: its CPU plugin runs the matrix
    products in bf16 on CPUs with native bf16 (AVX512-BF16 / AMX) at a low fixed cost per call,
    where torch's bf16 pays eager dispatch on top (BENCHMARKS.md, "Cheaper CPU replicas"). Also
    runs the int8 model (an OpenVINO IR) with precision "f32" for what it left unquantized."""

    def __init__(self, onnx_path: Path, threads: int, precision: str = "bf16"):
        import openvino as ov

        core = ov.Core()
        settings = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": max(1, threads),
            "NUM_STREAMS": 1,  # one request at a time: the replica's batcher feeds it
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", settings)
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.request.infer({name: batch[name] for name in self.input_names})[0]
