# tde — build, install, demo and test entry points.  `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Goals run strictly in the order given, even under `make -j`.
.NOTPARALLEL:

export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# PostgreSQL major versions to build, install and test against: all
# supported ones by default, `make test PG=17` for one.
PG ?= 15 17 18
# Targets that work on one version (install, test-pg, test-cluster,
# test-regress, run) take the first.
export PG_MAJOR ?= $(firstword $(PG))

.PHONY: help setup build install run stop status fmt fmt-check clippy \
	test-core test-cold test-pg test-cluster test-regress test-regress-plain bench test

help:
	@echo "make setup         what the tests need: Debian packages, cargo-pgrx, stock PostgreSQL 15.18, 17 and 18 built"
	@echo "                   from source, pgrx config (idempotent; make run needs only a part of it)"
	@echo "make build         cargo build the workspace"
	@echo "make install       build tde (release) and install it into PostgreSQL \$$PG_MAJOR (default 15)"
	@echo "make run           the demo's part of setup, install, start the demo cluster with tde (port 5499)"
	@echo "make stop          stop the demo cluster"
	@echo "make test          everything below, in order, stopping at the first failure,"
	@echo "                   for every supported PostgreSQL version (PG=\"15 17 18\"; make test PG=17 for one)"
	@echo "  fmt-check clippy test-core test-cold, then per version: test-pg install test-cluster test-regress"
	@echo "make test-cold     the fresh-machine path of the cached builds, from empty scratch caches"
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

# Once per version: the version-specific code is behind cargo features.
clippy:
	for v in $(PG); do \
		$(CARGO) clippy --workspace --all-targets --no-default-features \
			--features "pg$$v pg_test" -- -D warnings; \
	done

test-core:
	$(CARGO) test -p tde-core

# Under make on purpose: see the script.
test-cold:
	scripts/test-cold-path.sh

test-pg:
	scripts/test-pg.sh

# The stock build the pg_upgrade tests start from, per version under test
# (see scripts/build-pg.sh); it needs tde too.
UPGRADE_SOURCE_17 := 15
UPGRADE_SOURCE_18 := 17
# The versions earlier releases ran on: their clusters must keep working
# (scripts/build-previous.sh builds each from its release commit).
PREVIOUS_RELEASE_PG := 15
RELEASE_0_2_0_PG := 15 17 18

test-cluster: install
	$(CARGO) build --release -p tdectl
	for v in $(UPGRADE_SOURCE_$(PG_MAJOR)); do \
		PG_CONFIG=/opt/tde-pg/$$v/bin/pg_config scripts/install-ext.sh; \
	done
	previous=""; \
	case " $(PREVIOUS_RELEASE_PG) " in *" $(PG_MAJOR) "*) \
		previous="$$(scripts/build-previous.sh $(PG_MAJOR))";; esac; \
	release_0_2_0=""; \
	case " $(RELEASE_0_2_0_PG) " in *" $(PG_MAJOR) "*) \
		release_0_2_0="$$(scripts/build-previous.sh 0.2.0 $(PG_MAJOR))";; esac; \
	TDECTL=$(CURDIR)/target/release/tdectl \
		TDE_PREVIOUS_RELEASE_LIB="$$previous" \
		TDE_RELEASE_0_2_0_LIB="$$release_0_2_0" \
		TDE_PG_BIN="$$(PG_MAJOR=$(PG_MAJOR) scripts/pg-config.sh --bindir)" \
		$(CARGO) test -p pg_test -- --test-threads=1

test-regress: install
	scripts/regress.sh

test-regress-plain:
	MODE=plain scripts/regress.sh

bench:
	@if [ -x scripts/bench.sh ]; then scripts/bench.sh; else echo "no benchmarks yet (scripts/bench.sh)"; fi

# One make run, so `install` happens once even though test-cluster and
# test-regress depend on it; .NOTPARALLEL keeps the order.
test:
	$(MAKE) --no-print-directory setup fmt-check clippy test-core test-cold
	for v in $(PG); do \
		echo "==> PostgreSQL $$v"; \
		$(MAKE) --no-print-directory PG_MAJOR=$$v test-pg install test-cluster test-regress; \
	done
