"""DNS records for tunnel routes: ``rfc2136`` (the mechanism: read a name, write or delete its
records with one signed RFC 2136 update) and ``routes`` (which records the routes call for, in
which order relative to the store write, and undoing on failure)."""
