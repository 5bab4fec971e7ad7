# anycast-agent: `make demo` runs the local lab, `make test` runs everything CI runs.
# Both work as root on a fresh Debian 12 machine: they install what they need first.

SHELL := /bin/bash
PYTHON ?= python3
EXABGP_50 ?= 5.0.15
EXABGP_42 ?= 4.2.25
VENV := .venv
VENV42 := .venv-exabgp42
PY := $(VENV)/bin/python
APT_PACKAGES := bird2 iproute2 nftables procps systemd util-linux prometheus nginx-light curl gobgpd faketime etcd-server openssl haproxy

export ANYCAST_TEST_EXABGP_50 := $(CURDIR)/$(VENV)/bin/exabgp
export ANYCAST_TEST_EXABGP_42 := $(CURDIR)/$(VENV42)/bin/exabgp

.PHONY: all deps venv lint test unit chaos demo demo-fleet bench bench-scale bench-fast bench-knee bench-control bench-loss bench-dns fuzz clean

all: test

# System packages: BIRD 2 (the lab's upstream), systemd-analyze, setpriv, promtool, and nginx,
# curl, GoBGP and HAProxy (the C baseline) for the benchmarks. Needs root, as the lab does.
# While installing, a policy-rc.d keeps the packages' daemons (nginx, prometheus, haproxy)
# from starting.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  rc=$$?; [ -n "$$guard" ] && rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' 'exabgp==$(EXABGP_50)'
	touch $@

$(VENV42)/.stamp:
	$(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install -q 'exabgp==$(EXABGP_42)'
	touch $@

venv: $(VENV)/.stamp $(VENV42)/.stamp

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff format --check anycast_agent tests bench
	$(VENV)/bin/ruff check anycast_agent tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: $(VENV)/.stamp
	$(PY) -m pytest -q tests/unit

test: deps venv lint
	$(PY) -m pytest -q -rfEsP tests

# The chaos suite alone (tests/chaos: faults of RELIABILITY.md against real daemons); `make
# test` runs it too.
chaos: deps venv
	$(PY) -m pytest -q -rfEsP tests/chaos

demo: deps venv
	$(PY) -m tests.lab.demo

# Four PoPs in two regions coordinating through etcd (K = 2): every PoP's edges failing at once,
# a region drain and a ramp 25/50/100 %, printed as a timeline of what the upstream sees.
demo-fleet: deps venv
	$(PY) -m tests.lab.fleetdemo

# Benchmarks print their figures and the exact command; they are never pass/fail tests.
bench: deps venv
	$(PY) -m bench

# The probe-scale part alone: the agent (fresh, keep-alive) at N = 100, 500, 2000, HAProxy's
# checks just before it at each N, ExaBGP's healthcheck at N = 100 (about 5 minutes); writes
# its own dated section of docs/performance.md.
bench-scale: deps venv
	$(PY) -m bench --parts scale

# Fast-mode detection alone: 200 targets at 100 ms (timeout 80 ms, fall 3), 20 trials for a
# refused connection and for a silent drop, then 20 at 1 s beside them (about 4 minutes);
# writes its own dated section of docs/performance.md.
bench-fast: deps venv
	$(PY) -m bench --parts fast

# The knee alone: the largest N (keep-alive, then fresh) at which the agent holds probe jitter
# p99 < 50 ms with no missed slot, searched from 2,000 up to 8,000 targets (at most 7 steps
# per mode, about 5 minutes); writes its own dated section of docs/performance.md.
bench-knee: deps venv
	$(PY) -m bench --parts knee

# The control plane alone: /v1/status and /metrics latency at N=2000 while probing, and the
# probe jitter under 10 scrapers (about a minute per run). CONTROL_BASE=DIR (repeatable, as a
# list) also measures the agent code in DIR, e.g. an older commit's `git archive`, alternating
# with this tree's in the same run; updates the control-plane section of docs/performance.md.
CONTROL_ROUNDS ?= 2
bench-control: deps venv
	$(PY) -m bench --parts control --sizes 2000 --control-rounds $(CONTROL_ROUNDS) \
	  $(foreach b,$(CONTROL_BASE),--control-base $(b))

# False withdraws under packet loss on the edge links: 1 % and 5 % of the packets dropped each
# way, 5 minutes per rate (about 11 minutes), seven services side by side (fast 100 ms kept alive
# and fresh, and 1 s; a pair with min_healthy 1 and a single target each; a single target at
# 100 ms with fall 5). Not part of `make bench`; writes its own dated section of
# docs/performance.md.
bench-loss: deps venv
	$(PY) -m bench --parts loss

# The DNS probe (dnspython) against the hand-written one it replaced, side by side.
bench-dns: deps venv
	$(PY) -m bench.dns_probe

# Fuzzing (tests/fuzz): every outside-input surface at FUZZ_BUDGET inputs (100,000), seeded;
# prints the count, the time and the seed. `make test` runs a small budget of the same targets.
FUZZ_BUDGET ?= 100000
fuzz: deps venv
	$(PY) -m tests.fuzz --budget $(FUZZ_BUDGET) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED),)

clean:
	rm -rf $(VENV) $(VENV42) .mypy_cache .ruff_cache .pytest_cache *.egg-info
