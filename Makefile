# Two commands for a new user:  `make demo` (the whole pipeline on the built-in synthetic world, CPU)
# and `make test` (the test suite). Both create .venv and install what they need on first use.
# torch is installed only when the venv lacks it (pinned to $(TORCH_VERSION), the CPU build here);
# to keep your own CUDA build, create .venv yourself with that torch first, or pass VENV=path.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
KRONFLUENCE_VERSION ?= 1.0.1
DEMO_OUT ?= demo-out

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[all]"
	@# kronfluence (the EK-FAC reference the influence tests compare against) pins an old torchvision: no deps.
	$(PY) -m pip install -q --no-deps "kronfluence==$(KRONFLUENCE_VERSION)"
	@touch $@

demo: install
	$(VENV)/bin/thresher demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
