"""xray: cached-feature transfer learning for chest X-ray classification."""

__version__ = "0.1.0"
