"""xray's library: data, backbones, feature store, extraction, sources, heads, trainer, metrics, runs, reports."""

__version__ = "0.1.0"
