"""megatron-tulu: Tülu 3 post-training on Megatron-Core."""

__version__ = "0.1.0"
