"""The login portal on the portal host: login pages, the one-time PIN flow, the global session,
logout, JWKS and metrics (``handlers``), OIDC start and callback (``oidc``), and the end of an
admin sign-in (``admin_login``).
"""
