"""Northbound sinks: line protocol, the on-disk outbox, InfluxDB writers."""
