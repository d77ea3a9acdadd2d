# Berth: thin wrappers, so that people, CI and hooks run the very same commands.
#   make up | down | clean | logs | ps | build | train | package | repackage | migrate | psql
#   make fmt | lint | typecheck | test-local                                 a local .venv
#   make test                                                                everything, in containers
#   make test-faults                                  fault-injection tests (minutes), in containers
#   make up-replicas | release | deploy | rollback | rollout      several replicas, released images
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

COMPOSE ?= docker compose
# Baked into the images (berth_build_info) by every build that compose runs from here.
export GIT_SHA ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
PYTHON ?= python3
VENV := .venv
# The KServe SDK's own environment: its pins clash with Berth's (requirements/kserve-client.txt).
KSERVE_VENV := .venv-kserve
WAIT_TIMEOUT ?= 600

# `make test` runs its own stack beside the developer's, under another project name (its own
# containers, network and volumes) with its own env file and API port.
TEST_PROJECT := berth-test
TEST_ENV := .env.test
TEST_API_PORT ?= 18000
TEST_PROMETHEUS_PORT ?= 19090
# The monitoring profile is part of what `make test` checks (tests/e2e/test_monitoring.py). The
# demo model is quicker than the cache and not cached by default: CACHE_MIN_ROW_US=0 has the e2e
# tests go through the cache.
TEST_COMPOSE := COMPOSE_PROFILES=monitoring COMPOSE_PROJECT_NAME=$(TEST_PROJECT) CACHE_MIN_ROW_US=0 \
  $(COMPOSE) --env-file $(TEST_ENV)

# `make test-faults` kills and restarts services, so it gets a third project of its own, with
# short claim times: a killed worker's entries are taken over within seconds, not 30.
FAULTS_PROJECT := berth-faults
FAULTS_ENV := .env.faults
FAULTS_API_PORT ?= 18100
FAULTS_COMPOSE := COMPOSE_PROJECT_NAME=$(FAULTS_PROJECT) $(COMPOSE) --env-file $(FAULTS_ENV)
# Seconds pytest may take for all the fault scenarios.
FAULTS_TIMEOUT ?= 2400

PREDICT_BODY := {"features": [5.1, 3.5, 1.4, 0.2]}

.PHONY: help up up-monitoring test-alerts down clean logs ps build train package repackage audit feedback replay migrate psql fmt lint typecheck test test-local \
  test-faults bench profile up-replicas release deploy rollback rollout

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-z-]+:.*## / { printf "  make %-11s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.env:
	scripts/init-env.sh $@

$(TEST_ENV):
	scripts/init-env.sh $@ API_PORT=$(TEST_API_PORT) PROMETHEUS_PORT=$(TEST_PROMETHEUS_PORT)

# CACHE_MIN_ROW_US=0: the demo model cached, so that the faults hit rows of both kinds, computed
# and answered from the cache (the default, no cache, takes the first kind's path alone).
$(FAULTS_ENV):
	scripts/init-env.sh $@ API_PORT=$(FAULTS_API_PORT) WORKER_CLAIM_IDLE_MS=5000 \
	  WORKER_CLAIM_INTERVAL_SECONDS=2 CACHE_MIN_ROW_US=0

# ---- the stack -------------------------------------------------------------------------------

up: .env ## build, start, wait until every service is healthy; print where the API is
	$(call build-unless-deployed)
	$(COMPOSE) up --detach --wait --wait-timeout $(WAIT_TIMEOUT)
	@address=$$($(COMPOSE) port gateway 8000 2>/dev/null || $(COMPOSE) port api 8000); \
	address=$${address/0.0.0.0/127.0.0.1}; \
	body='$(PREDICT_BODY)'; \
	echo; \
	echo "Berth is up."; \
	echo "  API:   http://$$address"; \
	echo "  Docs:  http://$$address/docs"; \
	echo "  Try:   curl -s -X POST http://$$address/predict -H 'Content-Type: application/json' -d '$$body'"; \
	if [ -n "$$($(COMPOSE) ps --quiet prometheus 2>/dev/null)" ]; then \
	  echo "  Prometheus: http://$$($(COMPOSE) port prometheus 9090)"; \
	fi

# COMPOSE_PROFILES=monitoring make up does the same: compose reads the variable itself.
up-monitoring: ## make up, plus Prometheus scraping every api and worker and evaluating the alerts
	COMPOSE_PROFILES=monitoring $(MAKE) up

down: .env ## stop and remove the containers; the data volumes stay
	$(COMPOSE) down --remove-orphans

clean: .env ## stop and remove the containers and delete the volumes (database, Redis, models)
	$(COMPOSE) --profile test --profile monitoring down --volumes --remove-orphans

logs: .env ## follow the logs (one service: make logs S=api)
	$(COMPOSE) logs --follow --tail=200 $(S)

ps: .env ## list the containers and their health
	$(COMPOSE) ps --all

# Always the working tree's images (berth-api:latest, ...), even while a release is deployed.
build: .env ## build the images
	BERTH_API_IMAGE= BERTH_PACKAGER_IMAGE= BERTH_WORKER_IMAGE= $(COMPOSE) build

# seed-model runs the packager image (the api's, plus the ONNX converters); the api is built too,
# since a running one is restarted on the same code.
train: .env ## retrain the demo model iris/1 into the models volume; restart a running api
	$(call build-unless-deployed,api seed-model)
	$(COMPOSE) run --rm seed-model python -m berth_api.bundles.train --models-dir /models --force
	@if [ -n "$$($(COMPOSE) ps --status running --quiet api)" ]; then \
	  $(COMPOSE) restart api && $(COMPOSE) up --detach --no-deps --wait api; \
	fi

# The files are mounted read-only into a one-off packager container (seed-model: the api image plus
# the ONNX converters), which writes the bundle into the models volume; the api serves it after a
# restart. The bundle holds the model in skops' format (no code runs when the api loads it) unless
# skops cannot represent it with trusted types: then it is a pickle, which the api loads only once
# pinned in PICKLE_SHA256 (the command prints the entry). TRUSTED_TYPES lists extra types the skops
# form may hold; the api needs the same list. SAMPLE is also the training reference the drift views
# compare served rows with; TARGET names its column of true labels (or values), without which the
# model's predictions on it stand in.
package: .env ## package a fitted model: MODEL=model.joblib NAME=churn VERSION=3 [SAMPLE=sample.csv [TARGET=column]]
	@if [ -z "$(MODEL)" ] || [ -z "$(NAME)" ] || [ -z "$(VERSION)" ] || { [ -n "$(TARGET)" ] && [ -z "$(SAMPLE)" ]; }; then \
	  echo "usage: make package MODEL=path/to/model.joblib NAME=churn VERSION=3 [SAMPLE=path/to/sample.csv [TARGET=label_column]] [TRUSTED_TYPES=pkg.module.Class,...]" >&2; \
	  exit 2; \
	fi
	$(call build-unless-deployed,seed-model)
	$(COMPOSE) run --rm --no-deps \
	  -v "$(abspath $(MODEL)):/input/model.joblib:ro" \
	  $(if $(SAMPLE),-v "$(abspath $(SAMPLE)):/input/sample.csv:ro") \
	  seed-model python -m berth_api.bundles.package /input/model.joblib \
	  --name "$(NAME)" --version "$(VERSION)" --models-dir /models \
	  $(if $(SAMPLE),--sample /input/sample.csv) \
	  $(if $(TARGET),--target "$(TARGET)") \
	  $(if $(TRUSTED_TYPES),--trusted-types "$(TRUSTED_TYPES)")

# Rewrites a pickle bundle (model.joblib) in the models volume in place as skops, keeping the rest
# of it, once the skops copy predicts exactly as the pickle. Reading the pickle runs its code:
# run it only on a bundle you made. The api serves the new form after a restart.
repackage: .env ## rewrite a pickle bundle as skops: NAME=churn VERSION=3 [TRUSTED_TYPES=a.B,c.D]
	@if [ -z "$(NAME)" ] || [ -z "$(VERSION)" ]; then \
	  echo "usage: make repackage NAME=churn VERSION=3 [TRUSTED_TYPES=pkg.module.Class,...]" >&2; \
	  exit 2; \
	fi
	$(call build-unless-deployed,seed-model)
	$(COMPOSE) run --rm --no-deps seed-model python -m berth_api.bundles.repackage \
	  --name "$(NAME)" --version "$(VERSION)" --models-dir /models \
	  $(if $(TRUSTED_TYPES),--trusted-types "$(TRUSTED_TYPES)")

# SINCE/UNTIL are ISO times (UTC unless they say otherwise); the default is the last 24 hours.
audit: .env ## do the ledger's books balance? served vs stored, pending, spooled, dead-lettered
	$(COMPOSE) exec -T api python -m berth_api.ledger.audit \
	  $(if $(SINCE),--since "$(SINCE)") $(if $(UNTIL),--until "$(UNTIL)")

# The file goes to the api container on standard input; .jsonl (or .ndjson) is read as JSON lines,
# anything else as CSV with the header request_id,row_index,actual. Prints what was accepted and,
# by line number, what was not (exit 1 then).
feedback: .env ## send ground truth in bulk: FILE=labels.csv (or labels.jsonl)
	@if [ -z "$(FILE)" ]; then \
	  echo "usage: make feedback FILE=labels.csv (header request_id,row_index,actual) or FILE=labels.jsonl" >&2; \
	  exit 2; \
	fi
	$(COMPOSE) exec -T api python -m berth_api.ledger.feedback_upload \
	  --format $(if $(filter %.jsonl %.ndjson,$(FILE)),jsonl,csv) < "$(FILE)"

# Scores the traffic stored for model NAME (whichever versions served it) with its bundle VERSION,
# in the api container, which reads the models volume; nothing is served or stored as a
# prediction. Prints agreement and accuracy per served version and adds them to the replays table.
# SINCE/UNTIL are ISO times (UTC unless they say otherwise); without them, all the stored traffic.
replay: .env ## score stored traffic with a candidate: NAME=churn VERSION=3 [SINCE=..] [UNTIL=..] [JSON=1]
	@if [ -z "$(NAME)" ] || [ -z "$(VERSION)" ]; then \
	  echo "usage: make replay NAME=churn VERSION=3 [SINCE=2026-12-01T00:00] [UNTIL=2026-12-02T00:00] [JSON=1]" >&2; \
	  exit 2; \
	fi
	$(COMPOSE) exec -T api python -m berth_api.ledger.replay --name "$(NAME)" --version "$(VERSION)" \
	  $(if $(SINCE),--since "$(SINCE)") $(if $(UNTIL),--until "$(UNTIL)") $(if $(JSON),--json)

migrate: .env ## apply the database migrations (alembic upgrade head)
	$(call build-unless-deployed,worker)
	$(COMPOSE) run --rm migrate

# SQL on standard input works too: echo 'SELECT count(*) FROM predictions' | make psql
psql: .env ## open psql on the stack's database
	@tty=; [ -t 0 ] || tty=--no-TTY; \
	$(COMPOSE) exec $$tty postgres sh -c 'exec psql -v ON_ERROR_STOP=1 -U "$$POSTGRES_USER" -d "$$POSTGRES_DB"'

# ---- several replicas, releases, deploys (scripts/release.py) ---------------------------------

# The replicas layout (docker-compose.replicas.yml): api, api-2 and api-3 behind the gateway, on
# API_PORT, and WORKERS workers. To keep it for every command, put COMPOSE_FILE=$(REPLICAS_FILES)
# in .env (README, "Running several replicas").
REPLICAS_FILES := docker-compose.yml:docker-compose.replicas.yml
WORKERS ?= 3
# Where releases are pushed and deploys pulled from; a registry of your own on this machine:
#   docker run -d --name registry --restart unless-stopped -p 127.0.0.1:5000:5000 registry:2.8.2
REGISTRY ?= localhost:5000
# The env file deploys write the images to, and the history rollback reads.
ENV_FILE ?= .env
DEPLOY_HISTORY ?= .deploy-history
RELEASE = $(PYTHON) scripts/release.py --compose "$(COMPOSE)" --env-file "$(ENV_FILE)" \
  --history "$(DEPLOY_HISTORY)"

# While a release is deployed (make deploy wrote BERTH_API_IMAGE to the env file), a build would
# put the working tree under the release's tag: make up, train, package and migrate then run the
# deployed images and build nothing.
define build-unless-deployed
@if grep -q '^BERTH_API_IMAGE=.' "$(ENV_FILE)" 2>/dev/null; then \
  echo "make $@: $$(sed -n 's/^BERTH_API_IMAGE=//p' "$(ENV_FILE)") is deployed: building nothing"; \
else \
  echo "$(COMPOSE) build $(1)"; $(COMPOSE) build $(1); \
fi
endef

up-replicas: .env ## make up with 3 API replicas behind one gateway and WORKERS=3 workers
	COMPOSE_FILE=$(REPLICAS_FILES) WORKER_REPLICAS=$(WORKERS) $(MAKE) up

release: ## build, tag (VERSION, MAJOR.MINOR, sha-<commit>), push the images: VERSION=1.2.0 [REGISTRY=host:port]
	@[ -n "$(VERSION)" ] || { echo "usage: make release VERSION=1.2.0 [REGISTRY=$(REGISTRY)] [ALLOW_DIRTY=1]" >&2; exit 2; }
	$(RELEASE) release "$(VERSION)" --registry "$(REGISTRY)" $(if $(ALLOW_DIRTY),--allow-dirty)

deploy: $(ENV_FILE) ## run a released version (migrate, workers, API one at a time): VERSION=1.2.0 [REGISTRY=host:port]
	@[ -n "$(VERSION)" ] || { echo "usage: make deploy VERSION=1.2.0 [REGISTRY=$(REGISTRY)]" >&2; exit 2; }
	$(RELEASE) deploy "$(VERSION)" --registry "$(REGISTRY)"

rollback: $(ENV_FILE) ## back to the version deployed before the current one (.deploy-history)
	$(RELEASE) rollback

rollout: $(ENV_FILE) ## replace the API containers one at a time: serve new bundles or changed settings
	$(RELEASE) rollout

# ---- in a local virtualenv -------------------------------------------------------------------

$(VENV)/.installed: requirements/worker.txt requirements/api.txt requirements/packaging.txt \
  requirements/dev.txt
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps \
	  -e services/common -e services/api -e services/worker
	touch $@

# The KServe tests run tests/clients/kserve_sdk.py with this interpreter, in a subprocess.
$(KSERVE_VENV)/.installed: requirements/kserve-client.txt
	[ -x $(KSERVE_VENV)/bin/python ] || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/kserve-client.txt
	touch $@

fmt: $(VENV)/.installed ## format the code and apply the safe lint fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: $(VENV)/.installed ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed ## mypy, strict
	$(VENV)/bin/mypy .

# The PostgreSQL and Redis of this machine (127.0.0.1, see tests/conftest.py); the e2e tests skip
# because BERTH_API_URL is unset.
test-local: $(VENV)/.installed $(KSERVE_VENV)/.installed ## unit and integration tests against this machine's PostgreSQL and Redis
	env -u BERTH_API_URL BERTH_KSERVE_PYTHON="$(abspath $(KSERVE_VENV))/bin/python" \
	  $(VENV)/bin/pytest tests/unit tests/integration tests/e2e

# ---- everything, in containers ---------------------------------------------------------------

# Needs only Docker, make and git. A test project is torn down with its volumes whatever happens,
# and the exit status is that of the first step that failed.
#   $(call in-test-project,COMPOSE COMMAND,PROJECT,ARGUMENTS OF `run` FOR THE tests SERVICE)
define in-test-project
@trap '$(1) --profile test --profile monitoring down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1' EXIT; \
status=0; \
$(1) --profile test --profile monitoring down --volumes --remove-orphans >/dev/null 2>&1; \
$(1) --profile test build \
  && $(1) up --detach --wait --wait-timeout $(WAIT_TIMEOUT) \
  && $(1) --profile test run --rm --no-deps $(3) \
  || status=$$?; \
if [ $$status -ne 0 ]; then \
  echo "make $@: failed (exit $$status); state and logs of $(2):" >&2; \
  $(1) ps --all >&2 || true; \
  $(1) logs --no-color --tail=100 >&2 || true; \
fi; \
exit $$status
endef

# test-artifacts/ receives what the tests leave to look at (the dashboard's screenshot).
test: $(TEST_ENV) test-alerts ## lint, typecheck, alembic check, unit + integration + e2e tests in containers
	mkdir -p test-artifacts
	$(call in-test-project,$(TEST_COMPOSE),$(TEST_PROJECT),-v "$(abspath test-artifacts):/artifacts" tests)

# promtool ships in the Prometheus image: the stack's own configuration and alert rules are
# checked there, and every alert's unit tests (firing and not) run.
test-alerts: $(TEST_ENV) ## promtool: check the Prometheus config and rules, run the alerts' unit tests
	$(TEST_COMPOSE) run --rm --no-deps --entrypoint /bin/promtool prometheus \
	  check config /etc/prometheus/prometheus.yml
	$(TEST_COMPOSE) run --rm --no-deps --entrypoint /bin/promtool prometheus \
	  test rules /etc/prometheus/alerts.test.yml

# tests/e2e/faults runs only when BERTH_FAULTS_ENV_FILE names the project's env file, through
# which the tests drive compose (`make test` skips it); -s prints each scenario's figures.
FAULTS_RUN = -v "$(abspath $(FAULTS_ENV)):/run/berth-faults.env:ro" \
  -e BERTH_FAULTS_ENV_FILE=/run/berth-faults.env -e GIT_SHA tests \
  timeout --signal=INT --kill-after=30 $(FAULTS_TIMEOUT) \
  pytest -v -s -p no:cacheprovider tests/e2e/faults $(if $(FAULTS),-k "$(FAULTS)")

# FAULTS=expression runs only the matching scenarios (pytest -k), e.g. FAULTS=redis_down
test-faults: $(FAULTS_ENV) ## kill, stop and restart services under load; check the ledger (minutes)
	$(call in-test-project,$(FAULTS_COMPOSE),$(FAULTS_PROJECT),$(FAULTS_RUN))

# ---- performance -----------------------------------------------------------------------------

# Its own compose project (berth-bench, port 18200), torn down afterwards; results in
# bench-results/. BENCH_SECONDS=10 per run; BENCH_BASELINES=0 skips the peers.
bench: ## Berth against Flask, MLServer, BentoML and a bare ASGI app (wrk); tables + JSON in bench-results/
	$(PYTHON) bench/run.py

# The bench stack's api under wrk, sampled by py-spy: PROFILE_SECONDS=20, PROFILE_CONNECTIONS=64.
profile: ## where the API's CPU goes under load (py-spy, from outside); stacks in bench-results/
	$(PYTHON) -m bench.profile
