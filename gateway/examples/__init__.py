"""Example gateway configurations."""
