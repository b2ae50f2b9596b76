"""Command-line entry points (the `mm` command)."""
