# Two commands do everything on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

# serve: the gateway and the CPU build of vLLM; test: also the test and benchmark tools.
$(BIN)/.installed-serve: pyproject.toml deploy/install.sh
	bash deploy/check-host.sh $(PY)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	. $(BIN)/activate && bash deploy/install.sh cpu serve
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed-serve
	. $(BIN)/activate && bash deploy/install.sh cpu serve,test,bench
	touch $@

.PHONY: install serve test
install: $(BIN)/.installed-test

serve: $(BIN)/.installed-serve
	$(BIN)/moe-specialists serve

test: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest -q --durations=25
