"""The communication ops, each written once on top of the engine."""
