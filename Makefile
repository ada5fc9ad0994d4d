# K2's two set-up commands live here: `make demo` and `make test`.
# Both create .venv on first use from the pinned, hashed lock file.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-full bench-peers soak lock clean

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "K2 needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/k2 demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

# Benchmarks rewrite BENCHMARKS.md. `make bench` is the quick mode (3 runs, small
# datasets, a few minutes); `make bench-full` the full one (5 runs, up to 100M trades,
# an hour or more). More flags: `make bench BENCH_ARGS="--only sink"`
# (python -m benchmarks.run --help).
BENCH_ARGS ?=
bench: $(STAMP) bench-peers
	$(BIN)/python -m benchmarks.run --mode quick $(BENCH_ARGS)

bench-full: $(STAMP) bench-peers
	$(BIN)/python -m benchmarks.run --mode full $(BENCH_ARGS)

# The decode benchmark's peer, cryptofeed, in its own environment (not K2's lock).
# Best effort: if it cannot be installed, the decode block says so.
PEERS       := .bench/peers
PEERS_STAMP := $(PEERS)/.installed
CRYPTOFEED  := cryptofeed==2.4.1
bench-peers: $(PEERS_STAMP)

$(PEERS_STAMP):
	( test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS) ) && \
	$(PEERS)/bin/python -m pip install --quiet '$(CRYPTOFEED)' && touch $(PEERS_STAMP) || \
	echo "cryptofeed could not be installed: the decode block will say its peer was not measured"

# The platform under sustained load and faults, then an exact audit of the lake.
# 10 minutes by default; `make soak SOAK_ARGS=--short` runs 1 minute,
# `make soak SOAK_ARGS="--minutes 60"` longer (python -m benchmarks.soak --help).
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) $(PEERS) .mypy_cache .ruff_cache .pytest_cache
