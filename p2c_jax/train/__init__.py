"""Training: configuration, losses, the step over the device mesh, the loop."""
