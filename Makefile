# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gplq-env

.PHONY: env lint test demo demo-det demo-export demo-export-det demo-transfer bench bench-speed \
	bench-export bench-probe gpu-check clean

$(STAMP): requirements.txt setup.py tools/setup_env.sh
	VENV=$(VENV) bash tools/setup_env.sh
	touch $(STAMP)

env: $(STAMP)

# ruff's pycodestyle / pyflakes / isort rules (ruff.toml), then the suite
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) tools/demo_cls.py

demo-det: $(STAMP)
	$(PY) tools/demo_det.py

demo-export: $(STAMP)
	$(PY) tools/demo_export.py

demo-export-det: $(STAMP)
	$(PY) tools/demo_export_det.py

# what the quantized backbone still knows, on unseen classes (docs/transfer.md)
demo-transfer: $(STAMP)
	$(PY) tools/demo_transfer.py

# On a GPU: make bench-speed BENCH_ARGS=--compile
BENCH_ARGS ?=
bench-speed: $(STAMP)
	$(PY) tools/bench_speed.py $(BENCH_ARGS)

bench-export: $(STAMP)
	$(PY) tools/bench_export.py

# on a machine with a GPU: one line per check (docs/benchmarks.md)
gpu-check: $(STAMP)
	$(PY) tools/gpu_check.py

bench-probe: $(STAMP)
	$(PY) tools/bench_probe.py

bench: $(STAMP)
	$(PY) tools/benchmark.py --task cls
	$(PY) tools/benchmark.py --task det
	$(PY) tools/bench_probe.py

clean:
	rm -rf work_dirs
