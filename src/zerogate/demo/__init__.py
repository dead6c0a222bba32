"""``zerogate demo``: the one-command tour on an embedded SQLite store (``run``), with a demo
origin (``origin``) reached only through a tunnel.
"""
