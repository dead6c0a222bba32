"""The server process: ASGI wiring (``app``) and the granian runner (``run``)."""
