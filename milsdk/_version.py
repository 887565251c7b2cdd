"""The package version (one place, read by pyproject and embedded in every exported artifact)."""

__version__ = "0.1.0"
