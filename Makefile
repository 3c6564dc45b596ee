# tde — build, install, demo and test entry points.  `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Goals run strictly in the order given, even under `make -j`.
.NOTPARALLEL:

export PATH := $(HOME)/.cargo/bin:$(PATH)
export PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
CARGO ?= cargo
# Features for clippy: pg15 plus the #[pg_test] code.
CLIPPY_FEATURES ?= pg15 pg_test

.PHONY: help setup build install run stop status fmt fmt-check clippy \
	test-core test-pg test-cluster test-regress test-regress-plain bench test

help:
	@echo "make setup         install system packages, cargo-pgrx, pgrx config (idempotent)"
	@echo "make build         cargo build the workspace"
	@echo "make install       build tde (release) and install it into the system PostgreSQL 15"
	@echo "make run           setup + install + start the demo cluster with tde (port 5499)"
	@echo "make stop          stop the demo cluster"
	@echo "make test          everything below, in order, stopping at the first failure"
	@echo "  fmt-check clippy test-core test-pg install test-cluster test-regress"
	@echo "make test-regress-plain   PostgreSQL regression suite without tde (baseline)"
	@echo "make bench         benchmarks (scripts/bench.sh)"

setup:
	scripts/setup.sh

build:
	$(CARGO) build --workspace

install:
	scripts/install-ext.sh

run:
	scripts/cluster.sh run

stop:
	scripts/cluster.sh stop

status:
	scripts/cluster.sh status

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --features "$(CLIPPY_FEATURES)" -- -D warnings

test-core:
	$(CARGO) test -p tde-core

test-pg:
	scripts/test-pg.sh

test-cluster: install
	$(CARGO) build --release -p tdectl
	TDECTL=$(CURDIR)/target/release/tdectl $(CARGO) test -p pg_test -- --test-threads=1

test-regress: install
	scripts/regress.sh

test-regress-plain:
	MODE=plain scripts/regress.sh

bench:
	@if [ -x scripts/bench.sh ]; then scripts/bench.sh; else echo "no benchmarks yet (scripts/bench.sh)"; fi

# One make run, so `install` happens once even though test-cluster and
# test-regress depend on it; .NOTPARALLEL keeps the order.
test:
	$(MAKE) --no-print-directory setup fmt-check clippy test-core test-pg install test-cluster test-regress
