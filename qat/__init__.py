"""qat: open int8 quantization-aware training for lightweight vision networks."""

__version__ = "0.1.0"
