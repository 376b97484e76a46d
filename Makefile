# Targets CI runs, plus the demo. PYTHON is the project's virtual environment.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BERTREC := $(VENV)/bin/bertrec

.PHONY: setup demo test lint protos protos-check bench bench-index bench-recommend bench-encode bench-gpu

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

# torch first and pinned: an open range would pull a multi-GB CUDA build on a CPU machine.
setup: $(PYTHON)
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[server,dev]"

demo: setup
	$(BERTREC) serve

test:
	$(PYTHON) -m pytest

lint:
	$(VENV)/bin/ruff check bertrec server workers client store evaluation training rerank tests bench tools

protos:
	$(PYTHON) tools/gen_protos.py

protos-check:
	$(PYTHON) tools/gen_protos.py --check

bench:
	$(PYTHON) bench/service.py

# Exact vs IVF vs HNSW vs IVF-PQ at 100k and 1M items (long: HNSW at 1M builds for many minutes).
bench-index:
	$(PYTHON) bench/index.py

# Encode texts/s through the service vs in-process sentence-transformers at 1/8/32 callers, three
# text lengths; batching vs per-request; replica layout (about 12-15 minutes on a 2-core machine).
bench-encode:
	$(PYTHON) bench/encode.py

# Recommend through the service at 10k, 100k and 1M synthetic items, concurrency 1/8/32: latency,
# stage shares, memory, 1 vs 2 replicas (long: the 1M catalogue is written to SQLite and searched exactly).
bench-recommend:
	$(PYTHON) bench/recommend.py

# The encode / index / recommend figures on a CUDA machine (fp16 GPU replicas, FAISS GPU index)
# beside the CPU figures in bench/results/; says so and does nothing without a CUDA GPU.
bench-gpu:
	$(PYTHON) bench/gpu.py
