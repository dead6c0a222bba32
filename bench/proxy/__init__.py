"""The proxy benchmark (``run.py``). This file only gives mypy a distinct module name for it
(``proxy.run``), so it does not clash with ``bench/policy/run.py``."""
