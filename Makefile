# The two commands of the README. Both install what they need first and are safe to re-run.
.PHONY: demo test bootstrap bench

DURATION ?=

bootstrap:
	@bash scripts/bootstrap.sh

# The gateway against the simulated community, data landing in InfluxDB. Ctrl-C stops it.
demo: bootstrap
	.venv/bin/cgw demo $(if $(DURATION),--duration $(DURATION),)

# The whole test suite against private mosquitto, influxd and socat instances.
test: bootstrap
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)
