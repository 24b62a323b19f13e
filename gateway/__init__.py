"""The process: configuration, lifecycle, CLI, sinks and status. Only the CLI and tests import it."""
__version__ = "0.1.0"
