"""resgrad: why residual connections make deep networks trainable, measured."""

__version__ = "0.1.0"
