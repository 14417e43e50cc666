"""The package version, on the ground floor so that any layer can read it without importing the
package root (whose public API is loaded lazily)."""

__version__ = "0.1.0"
