"""The login portal: pages and flows on the portal host."""
