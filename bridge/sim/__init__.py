"""Simulated Wall Connectors and the benchmark, imported only by the commands that use them."""
