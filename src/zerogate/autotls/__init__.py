"""Automatic HTTPS (``listen.tls.acme``): ACME orders, the certificates every node serves picked
by SNI, renewal under a store lease, and the HTTP-01 listener. See docs/deploy.md."""
