"""qcompile: a graph-compiler-style quantisation pipeline for CNNs."""

__version__ = "0.1.0"
