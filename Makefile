# Entry points. A newcomer needs two: `make demo` and `make test` (README.md). Both run as root: the test
# world lives in network namespaces.

SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help deps plane image demo test unit chaos soak lint fmt clean-cluster bench-vrrp bench-proxy

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## install the Debian packages and toolchain components the tests need
	scripts/install-deps.sh

plane: deps ## build (or find cached) etcd, the Kubernetes binaries, kubelet and kubeadm, kubeadm's control-plane images, containerd, runc, CNI, pause, kubectl and helm
	e2e/controlplane/build.sh >/dev/null
	e2e/controlplane/images.sh >/dev/null
	e2e/noderuntime/build.sh >/dev/null
	e2e/kubetools.py >/dev/null

image: deps ## the kubeha image as an OCI archive in target/image (no Docker, no registry); prints its reference and digest
	scripts/build-image.sh

demo: plane image ## three masters, kubeha installed with helm, the active master powered off: the failover, timed and drawn
	$(CARGO) build --workspace --bins
	e2e/demo.sh

test: plane ## run every test: unit, integration, e2e on the real control plane and nodes, the chaos suite, a 3-minute soak
	scripts/build-image.sh --check-reproducible
	$(CARGO) build --workspace --bins
	KUBEHA_SOAK_SECONDS=$${KUBEHA_SOAK_SECONDS:-180} $(CARGO) test --workspace --all-targets

unit: ## every test that needs neither root nor the test control plane (protocol core, types, operator, agent, harness helpers); for contributors
	$(CARGO) test --workspace --exclude kubeha-e2e
	$(CARGO) test -p kubeha-e2e --lib

chaos: plane image ## the failover chaos suite alone: report and timeline in target/chaos (about 15 minutes)
	$(CARGO) build --workspace --bins
	$(CARGO) test -p kubeha-e2e --test chaos -- --nocapture

soak: plane image ## the 30-minute soak: random faults, then no leaks and one VIP holder
	$(CARGO) build --workspace --bins
	KUBEHA_SOAK_SECONDS=$${KUBEHA_SOAK_SECONDS:-1800} $(CARGO) test -p kubeha-e2e --test soak -- --nocapture

bench-vrrp: plane ## kubeha-agent vs keepalived failover benchmark (about 10 minutes); markdown on stdout
	$(CARGO) build --release -p kubeha-e2e -p kubeha-agent --bins
	target/release/bench-vrrp

bench-proxy: deps ## kubeha API proxy vs HAProxy benchmark (about 10 minutes); markdown on stdout
	$(CARGO) build --release -p kubeha-e2e -p kubeha-agent --bins
	target/release/bench-proxy

lint: deps ## formatting and clippy, as CI checks them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

clean-cluster: ## stop and remove whatever a test or demo left running
	e2e/cluster down
