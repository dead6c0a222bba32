"""The edge: the request pipeline in front of every protected application.

``pipeline`` routes, identifies, decides and hands an allowed request to an upstream;
``proxy`` is the upstream for ``origin:`` applications (the keep-alive pool for plain HTTP,
aiohttp for HTTPS and WebSockets). Wire mechanics are in :mod:`zerogate.net`.
"""
