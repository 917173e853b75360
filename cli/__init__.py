"""The `xray` command line: thin Typer commands over featurestore, rendered with rich."""
