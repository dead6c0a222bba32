"""zerogate: a self-hosted zero-trust access gateway."""

__version__ = "0.1.0"
