"""The networks: torch-named layers, the generator, the discriminators, MobileFaceNet."""
