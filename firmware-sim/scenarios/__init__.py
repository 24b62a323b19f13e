"""Scenario files for firmware-sim."""
