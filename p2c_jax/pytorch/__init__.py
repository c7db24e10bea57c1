"""Our PyTorch port of the original networks (``--compare_torch``, writing ``.pt`` files).

Needs the ``torch`` extra; nothing else in the package imports this at module level.
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "this feature needs PyTorch: pip install 'p2c-jax[torch]' (a CPU wheel: "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu)"
    ) from e
