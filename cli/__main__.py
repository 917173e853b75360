"""`python -m featurestore.cli`: the same as the `xray` console script."""

from .main import main

main()
