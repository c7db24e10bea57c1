"""Weights: the original .pt/.pth files (read without PyTorch), our Orbax checkpoints, and the
conversion between them."""
