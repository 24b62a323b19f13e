"""Grafana dashboards as code, generated from pipelines.schema."""
