# Every target that needs Python depends on the venv stamp, so a fresh clone works with
# `make train` or `make test` alone and a second call does not reinstall.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-fast bench bench-data bench-quality bench-precision bench-precision-quality bench-ddp gpu-check lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job: DINO pretraining + kNN evaluation on the embedded texels data, on CPU.
train: $(STAMP)
	$(BIN)/ssl-zoo train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py $(ARGS)

bench-data: $(STAMP)
	$(BIN)/python benchmarks/data_pipeline.py $(ARGS)

# fp32 vs bf16 on this CPU: GEMMs, a training step, the probe behind the default trainer.precision.
bench-precision: $(STAMP)
	$(BIN)/python benchmarks/precision.py $(ARGS)

# make train in fp32 and bf16 at seeds 0 and 1: kNN and speed side by side (~8 min).
bench-precision-quality: $(STAMP)
	$(BIN)/python benchmarks/precision_quality.py $(ARGS)

# images/s of trainer=ddp_cpu (2 processes) against 1 process on the same cores and global batch.
bench-ddp: $(STAMP)
	$(BIN)/python benchmarks/ddp_cpu.py $(ARGS)

# Does training learn? kNN curves of real runs (ARGS="--suite default-data" or "--suite cifar10").
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py $(ARGS)

# On a CUDA machine: each method 50 steps under trainer=gpu, DINOv2 ViT-S under trainer=fsdp ->
# outputs/gpu_check/gpu_check.json (docs/cluster.md). Without CUDA: one line, exit 0.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf outputs multirun .pytest_cache
