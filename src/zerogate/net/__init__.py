"""Wire mechanics with no policy: what every surface and upstream shares to speak HTTP.

``asgi`` names the ASGI shapes; ``http`` reads headers, cookies, bodies and forms and writes
raw responses; ``headers`` holds the forwarding rules (hop-by-hop, the ``X-Forwarded-For``
walk over the configured trusted proxies, what an upstream may not set); ``pool`` is the
HTTP/1.1 keep-alive pool (httptools) for plain origins, used by the edge and the connector;
``websocket`` the one WebSocket reject / close-code / relay; ``client`` the one aiohttp
session factory and bounded fetch. Nothing here decides who may pass: zerogate's cookie rules
are :mod:`zerogate.runtime.cookies`.
"""
