# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gplq-env

.PHONY: env test demo demo-det clean

$(STAMP): requirements.txt setup.py tools/setup_env.sh
	VENV=$(VENV) bash tools/setup_env.sh
	touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) tools/demo_cls.py

demo-det: $(STAMP)
	$(PY) tools/demo_det.py

clean:
	rm -rf work_dirs
