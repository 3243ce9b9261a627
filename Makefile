# The two commands a newcomer needs: `make quickstart` (set up, then run the offline quickstart) and
# `make test`. `.ci/run` runs `make setup` and `make test`, so a green CI means both work.
PY := .venv/bin/python

.PHONY: setup quickstart test
setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/peftlab train configs/quickstart.yaml

test:
	$(PY) -m pytest
