"""xray: cached-feature transfer learning for chest X-ray classification."""

__version__ = "0.1.0"


def library_versions() -> dict[str, str]:
    """Versions of the software behind a store or a run (recorded for provenance)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"xray": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "numpy", "h5py", "pillow", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # e.g. a vendored build without metadata
            out[dist] = "unknown"
    return out
