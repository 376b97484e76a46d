"""Static int8 CPU replicas: the exported graph quantized once with NNCF, run on OpenVINO.

Post-training quantization calibrated on real texts: NNCF runs the fp32 graph over a calibration
set, fixes one activation range per quantized input from what it saw, and inserts int8
quantize/dequantize pairs around the matrix products (its transformer preset keeps softmax,
LayerNorm and the other range-sensitive ops in floating point; weights symmetric per channel,
activations asymmetric). OpenVINO then runs those products as int8 (VNNI on AVX-512 CPUs).

Against dynamic quantization (torch's, scaling activations per batch): vectors at mean cosine
0.998 instead of 0.972 to fp32, and a text's vector no longer depends on the texts batched with
it; about 2x the fp32 default's throughput in batches (BENCHMARKS.md, "Cheaper CPU replicas").

The quantized model is cached beside the ONNX export (OpenVINO IR, ~25 MB for a MiniLM), keyed on
the export, the calibration set and the NNCF version, so it is made once (~10 s) per checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from bertrec.workers.onnx_model import made_once, prune_exports

logger = logging.getLogger(__name__)

INT8_FORMAT = 1  # bump when the quantization recipe changes
CALIBRATION_BATCH = 16  # texts per calibration batch, of similar lengths (as replicas batch them)
# The built-in calibration set, from the MovieLens copy shipped as the demo catalogue: titles
# (~10 tokens) and longer texts made of title, genres and tags (up to ~100 tokens), so the ranges
# cover short and long inputs alike. Every CALIBRATION_STRIDE-th movie, for each kind.
CALIBRATION_STRIDE = 64
MAX_CALIBRATION_TEXTS = 512  # from a user's file (model.int8_calibration): plenty for the ranges


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def calibration_texts() -> list[str]:
    """The built-in calibration texts: titles, title + genres, title + genres + tags."""
    from bertrec.movielens import bundled_path, read_movies

    folder = bundled_path()
    tags: dict[int, list[str]] = {}
    with open(folder / "tags.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            tags.setdefault(int(row["movieId"]), []).append(row["tag"].strip())
    movies = list(read_movies(folder))
    texts = []
    for n, movie in enumerate(movies[::CALIBRATION_STRIDE]):
        genres = ", ".join(movie.metadata.get("genres", []))
        kind = n % 3
        if kind == 0:
            texts.append(movie.text)
        elif kind == 1:
            texts.append(f"{movie.text}. {genres}")
        else:
            extra = "; ".join(tags.get(movie.id, [])[:24])
            texts.append(f"{movie.text}. {genres}. {extra}".rstrip(". "))
    # Longer texts: several movies' descriptions run together, towards the usual token cap.
    for start in range(0, len(movies), CALIBRATION_STRIDE * 8):
        chunk = movies[start : start + CALIBRATION_STRIDE * 8 : CALIBRATION_STRIDE]
        texts.append(" ".join(f"{m.text} ({', '.join(m.metadata.get('genres', []))})." for m in chunk))
    return texts


def read_calibration_file(path: str) -> list[str]:
    """The first MAX_CALIBRATION_TEXTS non-empty lines of a text file, or a ValueError."""
    try:
        with open(path, encoding="utf-8") as fh:
            texts = [line.strip() for line in fh if line.strip()][:MAX_CALIBRATION_TEXTS]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"model.int8_calibration: cannot read {path!r} ({exc})") from None
    if not texts:
        raise ValueError(f"model.int8_calibration: {path!r} has no text (one text per line)")
    return texts


def calibration_digest(texts: list[str]) -> str:
    """A short key of a calibration set: part of the cached model's name and of the vector format."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def calibration_batches(tokenizer, texts: list[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """The texts tokenized as replicas feed the model: sorted by length, padded to each batch's longest."""
    from bertrec.workers.encoder import padded_batch

    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
    starts = range(0, len(order), CALIBRATION_BATCH)
    return [padded_batch(tokenizer, encoded, order[s : s + CALIBRATION_BATCH]) for s in starts]


def quantized_key(onnx_path: Path, texts: list[str], max_length: int) -> str:
    import nncf

    return f"{onnx_path.stem}-int8-c{calibration_digest(texts)}-l{max_length}-n{nncf.__version__}-q{INT8_FORMAT}"


def quantized_model(onnx_path: Path, tokenizer, max_length: int, texts: list[str] | None = None) -> Path:
    """The int8 model (OpenVINO IR .xml, weights in the .bin beside it), made on first use.

    As with the ONNX export, replicas starting together take a file lock, so one quantizes and the
    others load its files; the .xml appears last, by rename, so a crash leaves nothing half-made.
    """
    texts = texts if texts is not None else calibration_texts()
    target = onnx_path.parent / f"{quantized_key(onnx_path, texts, max_length)}.xml"
    return made_once(
        target,
        lambda: _quantize(onnx_path, calibration_batches(tokenizer, texts, max_length), target),
        lambda: prune_exports(onnx_path.parent, pattern="*.xml", remove=remove_quantized),
    )


def _quantize(onnx_path: Path, batches: list[dict[str, np.ndarray]], target: Path) -> None:
    import nncf
    import openvino as ov

    texts = sum(len(b["input_ids"]) for b in batches)
    logger.info("quantizing %s to int8 on %d texts (once; cached in %s)", onnx_path.name, texts, target.parent)
    with _quiet_nncf():
        model = ov.Core().read_model(str(onnx_path))
        quantized = nncf.quantize(
            model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(batches),
        )
    # Staged under this process's own name beside the target; the .xml, which readers look for,
    # is renamed last. What a killed process leaves behind ends in .tmp.xml / .tmp.bin and is
    # pruned like any stale model.
    staged = target.with_name(f"{target.stem}.{os.getpid()}.tmp.xml")
    try:
        ov.save_model(quantized, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
        staged.with_suffix(".bin").unlink(missing_ok=True)


def remove_quantized(xml: Path) -> None:
    """Delete one cached int8 model: the .xml first, so no reader finds it without its weights."""
    xml.unlink(missing_ok=True)
    xml.with_suffix(".bin").unlink(missing_ok=True)
    Path(f"{xml}.lock").unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's progress bars and INFO lines are noise in a replica's log; its errors still raise."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            yield
    finally:
        nncf_logger.setLevel(level)
