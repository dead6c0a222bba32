"""Administration on the portal host: ``service`` (what an admin can do, shared by the REST API,
the panel and the CLI: versioned CRUD, credentials, logs, the policy tester), ``app`` (the front
door: API token or admin session → ``principal``) with ``auth``, ``api`` (FastAPI under
``/api/v1``), ``panel`` and ``panel_forms`` (the web panel under ``/admin``) and
``connector_tokens`` (connector tokens and the edge addresses they carry). The server mounts it.
"""
