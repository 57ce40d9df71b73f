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

.PHONY: install serve test test-fast
install: $(BIN)/.installed-test

serve: $(BIN)/.installed-serve
	$(BIN)/moe-specialists serve

# Two workers, each running whole test files (module fixtures start engines once): the suite waits on vLLM and
# Docker start-ups more than it computes, so two overlap on two cores.
test: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

# The inner loop: everything but the tests marked slow (docker image, fault injection, end-to-end runs).
test-fast: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not slow" --durations=10
