# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean

# The venv, one install at a time (scripts/install.sh says why and how).
$(STAMP): pyproject.toml
	$(PYTHON) scripts/locked.py $(VENV).lock sh scripts/install.sh "$(PYTHON)" $(VENV)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fcnseg demo --out demo_out

# Two workers, one per core (most tests run one thread); a file's tests stay together (its fixtures are made once).
test: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile

# fcnseg against the real pytorch-fcn, side by side (a few minutes; not part of `make test`). The peer is
# installed for the benchmark only, without its dependencies (its models need none of them).
bench: $(STAMP)
	$(BIN)/pip install -q --no-deps torchfcn==1.9.7
	$(BIN)/python benchmarks/side_by_side.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts hubconf.py

clean:
	rm -rf $(VENV) $(VENV).lock demo_out
