# Every target builds what it needs: a fresh clone runs `make serve` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
STAMP := $(VENV)/.installed
NODE_DIR := tests/blackbox/node
NODE_DEPS := $(NODE_DIR)/node_modules/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: node-deps lock serve test lint typecheck gen gen-check buf-lint pytest pytest-sqlite pytest-postgres bench soak clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Re-resolve every dependency (runtime and dev) from pyproject.toml into constraints.txt.
lock:
	rm -rf $(TOOLS)/lock && $(PYTHON) -m venv $(TOOLS)/lock
	$(TOOLS)/lock/bin/pip install --quiet --upgrade pip
	$(TOOLS)/lock/bin/pip install --quiet '.[dev]'
	{ sed -n '1,2p' constraints.txt; $(TOOLS)/lock/bin/pip freeze --exclude-editable | grep -v '^hitl-grpc'; } > constraints.new
	mv constraints.new constraints.txt

$(BUF): Makefile
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@1.75.0
	touch $(BUF)

# The black-box tier's Node.js client, exactly as locked; without node/npm `make pytest` fails.
$(NODE_DEPS): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --silent --no-audit --no-fund --ignore-scripts
	touch $(NODE_DEPS)

node-deps: $(NODE_DEPS)

serve: $(STAMP)
	$(BIN)/hitl-grpc serve

# protoc from grpcio-tools, stubs from mypy-protobuf; $(1) is the output folder.
define protoc
	mkdir -p $(1)
	$(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$(1) --grpc_python_out=$(1) \
	  --mypy_out=$(1) --mypy_grpc_out=async_only:$(1) \
	  $$(find protos -name '*.proto' | sort)
	touch $(1)/hitl/__init__.py $(1)/hitl/v1/__init__.py $(1)/hitl/py.typed
endef

gen: $(STAMP)
	rm -rf generated/hitl
	$(call protoc,generated)

# Regenerate into a scratch folder and compare: stale generated code fails the build.
gen-check: $(STAMP)
	@rm -rf $(TOOLS)/gen-check && mkdir -p $(TOOLS)/gen-check
	@$(call protoc,$(TOOLS)/gen-check)
	@diff -r -q -x __pycache__ generated $(TOOLS)/gen-check > /dev/null || \
	  { echo "generated/ is stale: run 'make gen' and commit"; diff -r -x __pycache__ generated $(TOOLS)/gen-check | head -20; exit 1; }
	@echo "generated code is fresh"

buf-lint: $(BUF)
	$(BUF) lint

lint: $(STAMP)
	$(BIN)/ruff check hitl_grpc tests bench
	$(BIN)/ruff format --check hitl_grpc tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy hitl_grpc tests bench

# The floor is checked by coverage itself, after the serve/CLI subprocess data is combined.
pytest: $(STAMP) $(NODE_DEPS)
	deploy/need.sh tmux tmux
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider --cov=hitl_grpc --cov-report= $(PYTEST_ARGS)
	$(BIN)/coverage combine -q 2>/dev/null || true
	$(BIN)/coverage report --skip-covered --fail-under=90

test: buf-lint gen-check lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Two replicas on one PostgreSQL under crashes and database faults; checks nothing was lost.
SOAK_S ?= 300
soak: $(STAMP)
	$(BIN)/python -m bench.soak --seconds $(SOAK_S)

clean:
	rm -rf $(VENV) $(TOOLS) .coverage* .mypy_cache .ruff_cache

# --- The container image and the deployment shape (deploy/) ---
.PHONY: image image-check deploy-check

# Docker where a daemon answers, buildah otherwise; the base from debootstrap (deploy/image.sh).
image: $(STAMP)
	deploy/image.sh

# Builds and runs the image, checks health and a login from outside. Minutes: not in `make test`.
image-check: $(STAMP)
	@if [ "$${CI:-}" != true ] && ! command -v docker > /dev/null && ! command -v buildah > /dev/null; then \
	  echo "image-check skipped: neither docker nor buildah is installed (CI=true requires it)"; \
	else $(MAKE) image && $(BIN)/python -m bench.image_check; fi

# Two replicas on a fresh PostgreSQL database behind Debian's nginx (grpc_pass), no containers.
deploy-check: $(STAMP)
	deploy/need.sh nginx nginx
	$(BIN)/python -m bench.deploy_check
