"""Command line: ``zerogate`` (typer + rich). ``main`` holds the app and the configuration,
policy, server and demo commands; ``tokens``, ``api_tokens``, ``tunnels``, ``connector`` and
``logs`` the others.
"""
