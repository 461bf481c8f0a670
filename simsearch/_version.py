"""The package version, importable from anywhere without loading the package (no import cycles)."""

__version__ = "0.2.0"
