"""Modbus TCP/RTU polling driven by device profiles."""
