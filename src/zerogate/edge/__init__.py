"""The edge: the request pipeline in front of every protected application.

``pipeline`` runs each request (route → reserved ``/.zerogate/*`` paths → identify → decide →
forward, login or block → record); ``proxy`` forwards an allowed request or WebSocket to its
origin (``upstream_pool``, zerogate's keep-alive pool of raw HTTP/1.1 connections, for
``http://`` and ``unix:`` origins; aiohttp for HTTPS origins and WebSockets); ``headers`` holds
the pure header rules (hop-by-hop, ``Zerogate-*`` stripping, the ``X-Forwarded-*`` trust walk);
``flow`` signs and opens the login-flow blobs; ``http`` and ``asgi_types`` are the raw-ASGI
helpers and types the edge, the portal and the admin front door use.
"""
