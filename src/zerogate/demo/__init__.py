"""``zerogate demo``: the one-command tour on an embedded SQLite store."""
