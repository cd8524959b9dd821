# The two commands of the README: `make demo` (set up + run the main job) and `make test`.
SHELL := /bin/bash
ENV := source scripts/env.sh &&
ARGS ?=

.PHONY: setup test demo bench bench-edge train clean

setup:
	@bash scripts/setup.sh

test: setup
	@$(ENV) python -m pytest test -q $(ARGS)

demo: setup
	@$(ENV) eclm-ros demo $(ARGS)

train: setup
	@$(ENV) eclm-ros train $(ARGS)

bench: setup
	@$(ENV) eclm-ros bench --out runs/bench $(ARGS)

bench-edge: setup
	@$(ENV) eclm-ros bench-edge --out runs/bench-edge $(ARGS)

clean:
	rm -rf build install log
