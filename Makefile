# crf-app — every target creates the virtual environment it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: open the app (creates the demo NA-Semax study on first run)
run: $(STAMP)
	$(BIN)/crf-app --first-run-demo

## test: lint, layer contracts and the whole test suite (Qt offscreen)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

## lint: ruff and the import-linter layer contracts
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

## bench: performance figures (printed, and kept in README's performance section), on a
## generated study cached in benchmarks/.cache/; e.g. make bench BENCH_SUBJECTS=1000
## BENCH="bench_startup bench_subject_list" runs those two on a 1,000-subject study
BENCH_SUBJECTS ?= 10000
BENCH ?=
bench: $(STAMP)
	QT_QPA_PLATFORM=offscreen BENCH_SUBJECTS=$(BENCH_SUBJECTS) $(BIN)/python -m benchmarks $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
