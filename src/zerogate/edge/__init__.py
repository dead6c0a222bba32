"""The edge: the request pipeline in front of every protected application.

``headers`` holds the pure header rules (hop-by-hop, ``Zerogate-*`` stripping, the
``X-Forwarded-*`` trust walk); ``proxy`` forwards an allowed request or WebSocket to its origin
through a pooled aiohttp client; ``asgi_types`` names the ASGI shapes both use.
"""
