# The two commands a newcomer needs: `make quickstart` (set up, then run the offline quickstart) and
# `make test`. `.ci/run` runs `make setup` and `make test`, so a green CI means both work.
PY := .venv/bin/python

.PHONY: setup quickstart test test-latest lock
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
