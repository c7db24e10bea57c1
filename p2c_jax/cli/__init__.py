"""Command-line entry points (console scripts p2c-train, p2c-infer, p2c-convert)."""
