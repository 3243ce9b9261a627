# The two commands a newcomer needs: `make quickstart` (set up, then run the offline quickstart) and
# `make test`. `.ci/run` runs `make setup` and `make test`, so a green CI means both work.
PY := .venv/bin/python

.PHONY: setup quickstart test test-latest lock test-peers
setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/peftlab train configs/quickstart.yaml

test:
	$(PY) -m pytest

# The newest releases pyproject.toml allows, in .venv-latest, and the whole suite against them.
test-latest:
	bash scripts/test_latest.sh

# After `make test-latest` passed: take that environment as the tested set.
lock:
	.venv-latest/bin/python scripts/freeze_tested.py .venv-latest > constraints.txt

# AdapterHub parity (docs/adapterhub.md): regenerate tests/fixtures/adapterhub with AdapterHub itself (its own
# venv: adapters 1.3, transformers 4.57), export each fixture back with peftlab, and check that AdapterHub
# loads those exports with peftlab's logits. `make test` needs none of this: the fixtures are committed.
test-peers:
	AH=$$(bash benchmarks/peers/setup_adapterhub.sh) && \
	  $$AH/bin/python scripts/adapterhub_fixtures.py write && \
	  rm -rf runs/adapterhub-exports && $(PY) scripts/adapterhub_fixtures.py export runs/adapterhub-exports && \
	  $$AH/bin/python scripts/adapterhub_fixtures.py check runs/adapterhub-exports
	$(PY) -m pytest -q tests/test_adapterhub.py tests/test_adapterhub_fidelity.py tests/test_adapterhub_methods.py
	# compositions and AdapterFusion (docs/adapterhub_compositions.md); its fixtures reuse the bases written above
	AH=$$(bash benchmarks/peers/setup_adapterhub.sh) && \
	  $$AH/bin/python scripts/adapterhub_compose_fixtures.py write && \
	  rm -rf runs/adapterhub-compose-exports && \
	  $(PY) scripts/adapterhub_compose_fixtures.py export runs/adapterhub-compose-exports && \
	  $$AH/bin/python scripts/adapterhub_compose_fixtures.py check runs/adapterhub-compose-exports
	$(PY) -m pytest -q tests/test_adapterhub_compose.py
