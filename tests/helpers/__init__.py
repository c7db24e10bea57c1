"""What the tests share: the PyTorch references, the training worker, the fake GCS server,
generated faces and stand-in backends, small net specs; ``DATA``, the real images and
checkpoint layouts under tests/data (see data/README.md: the original's, MIT).

Importable as ``helpers`` (pyproject.toml puts tests/ on the path); test modules never import
each other.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
