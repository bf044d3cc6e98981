# keypair-operator: every entry point a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

SANDBOX_PROVIDER ?= threatwinds
SANDBOX_LISTEN ?= 127.0.0.1:8090
# Where `make install-plugin` puts kubectl-keypair (in $(PREFIX)/bin), and the cargo
# profile it builds with (`dev` builds faster).
PREFIX ?= $(HOME)/.local
PLUGIN_PROFILE ?= release

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## the demo: local control plane + sandbox + operator + a sample ApiKeyPair turning into a Secret
	scripts/demo.sh

.PHONY: demo-down
demo-down: ## stop what `make demo` started
	-@for f in .cluster/demo/operator.pid .cluster/demo/sandbox.pid; do [ -f $$f ] && kill $$(cat $$f) 2>/dev/null; rm -f $$f; done
	scripts/control-plane.sh down

.PHONY: install-plugin
install-plugin: ## build the kubectl plugin and install it as $(PREFIX)/bin/kubectl-keypair (`kubectl keypair ...`)
	cargo build --locked --profile $(PLUGIN_PROFILE) --bin kubectl-keypair
	install -D -m 0755 target/$(if $(filter dev,$(PLUGIN_PROFILE)),debug,$(PLUGIN_PROFILE))/kubectl-keypair $(PREFIX)/bin/kubectl-keypair
	@echo "installed $(PREFIX)/bin/kubectl-keypair"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "note: $(PREFIX)/bin is not on PATH; add it, or run make install-plugin PREFIX=<dir on PATH>";; esac

.PHONY: test
test: ## run every test: installs what is missing, starts a local control plane, stops it after
	scripts/test.sh

FUZZ_SECONDS ?= 60

.PHONY: fuzz
fuzz: ## run every cargo-fuzz target under fuzz/ for FUZZ_SECONDS each (default 60); installs nightly and cargo-fuzz when missing
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors (with and without test features, and as the production image builds)
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --all-features -- -D warnings
	cargo clippy --no-default-features -- -D warnings

IMAGE ?= keypair-operator:0.1.0
PLATFORMS ?= linux/amd64,linux/arm64

.PHONY: image
image: ## build the production image (no sandbox) for $(PLATFORMS) with docker buildx, tagged $(IMAGE)
	docker buildx build --platform $(PLATFORMS) -t $(IMAGE) .

TRIALS ?= 200
STEPS ?= 20
PARALLEL ?= 3
SHRINK ?= 1

.PHONY: chaos
chaos: ## the seeded fault campaign (TRIALS=200 STEPS=20 from SEED, a fresh one when unset; SHRINK=1 reduces a failing trial): prints a report
	scripts/control-plane.sh install
	KUBECONFIG=$${KUBECONFIG:-$$(scripts/control-plane.sh up)} \
	CHAOS_SEED=$(if $(SEED),$(SEED),$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')) CHAOS_TRIALS=$(TRIALS) \
	CHAOS_STEPS=$(STEPS) CHAOS_PARALLEL=$(PARALLEL) CHAOS_SHRINK=$(SHRINK) \
	cargo test --features failpoints --test chaos -- --nocapture the_invariants_hold

.PHONY: bench
bench: ## the scale benchmark (release build; BENCH_N=10000 for the full run): prints a table and one JSON line
	scripts/control-plane.sh install
	KUBECONFIG=$${KUBECONFIG:-$$(scripts/control-plane.sh up)} cargo bench --bench scale

.PHONY: soak
soak: ## the soak (release build): SOAK_N keys (1000) for SOAK_MINUTES (10) under 5% provider faults; prints samples, figures against goals, one JSON line
	scripts/control-plane.sh install
	KUBECONFIG=$${KUBECONFIG:-$$(scripts/control-plane.sh up)} cargo bench --bench soak

.PHONY: crds
crds: ## regenerate crds/ and the Helm chart's files/crds/ (rendered by templates/crds.yaml) from the Rust types
	cargo run --quiet -- crds --output-dir crds
	cargo run --quiet -- crds --output-dir charts/keypair-operator/files/crds

.PHONY: cluster-up
cluster-up: ## start the local control plane (builds it on first use); prints the kubeconfig path
	scripts/control-plane.sh up

.PHONY: cluster-down
cluster-down: ## stop the local control plane
	scripts/control-plane.sh down

.PHONY: sandbox
sandbox: ## run a sandbox provider (SANDBOX_PROVIDER=threatwinds|datonis, SANDBOX_LISTEN=host:port)
	cargo run --quiet -- sandbox --provider $(SANDBOX_PROVIDER) --listen $(SANDBOX_LISTEN) \
	  --session-token sandbox-session-token --user demo@example.com:demo-password
