"""Command line: ``zerogate`` (typer + rich)."""
