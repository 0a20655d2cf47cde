# Set-up and entry points. `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned together (a mismatched pair fails to import); the pair below is the
# one tested here. On GPU machines it is the CUDA build from PyPI; it also runs on CPUs.
TORCH := torch==2.14.1 torchvision==0.29.1

export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test test-extra test-quick soak lint format bench clean

$(BIN)/dpiqa: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/dpiqa
	$(BIN)/dpiqa demo --output demo-out

# Two pytest workers (pytest-xdist), each module on one of them (its module fixtures, such as a trained tiny
# teacher, are made once): most tests wait on Ray processes, so two share a 2-core machine well.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadscope

# The whole suite, the SIGKILL-and-resume fault tests included (what CI runs).
test: $(BIN)/dpiqa
	RUN_SLOW=1 $(PYTEST) --durations=15

# Without the tests marked `slow` (a SIGKILL and a rerun each): the quick loop while editing.
test-quick: $(BIN)/dpiqa
	$(PYTEST)

# The checks kept out of `make test` for its time: the shipped demo checkpoint's figures recomputed (AGIQA-3K
# test SRCC, ONNX export on the demo corpus) and every bench script's smoke run. CI runs it after `make test`.
test-extra: $(BIN)/dpiqa
	RUN_EXTRA=1 RUN_SLOW=1 $(PYTEST) -m extra --durations=10

# The soak test at ten rounds of random kills and S3 faults (the suite runs three): ~12 minutes here.
soak: $(BIN)/dpiqa
	DPIQA_SOAK_ROUNDS=10 RUN_SLOW=1 $(BIN)/python -m pytest -q tests/engine/test_soak.py

lint: $(BIN)/dpiqa
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/dpiqa
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo-out
