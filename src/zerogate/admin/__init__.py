"""Administration: the service every admin surface shares (``service``), the REST API under
``/api/v1/`` and the web panel under ``/admin`` on the portal host. Imports model, store and
policy; the server mounts it."""
