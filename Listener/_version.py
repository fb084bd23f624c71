"""The single place the package version is written."""

__version__ = "1.1.0"
