# Two commands do everything on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

$(BIN)/.installed: pyproject.toml deploy/install.sh
	test -d $(VENV) || $(PY) -m venv $(VENV)
	. $(BIN)/activate && bash deploy/install.sh cpu
	touch $@

.PHONY: install serve test lint
install: $(BIN)/.installed

serve: install
	$(BIN)/moe-specialists serve

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q --durations=25
