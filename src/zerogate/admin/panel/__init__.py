"""The web admin panel at ``https://<portal>/admin``: server-rendered pages over ``AdminService``.

The admin front door authenticates every request and puts a ``Principal`` into the scope; this
app never authenticates anyone, and refuses to run without a principal (``principal_of``).

- Pages are plain HTML forms (Jinja2, autoescaped) that work without JavaScript;
  ``static/panel.js`` only adds conveniences (add a rule row in place, confirm deletes, show the
  fields of the chosen origin / provider type). No inline script, and a Content-Security-Policy
  that forbids one.
- Every POST carries a CSRF token (``panel_forms.csrf_token``: an HMAC over the principal's
  session id and a time, keyed with ``secret``) and is refused with 403 without a valid one, or
  when the principal is read-only (who then sees the pages without their write buttons).
- Writes go through ``AdminService`` as ``Actor.of(principal)``, so the admin log records them;
  forms carry the object's version, so a stale form gets 409 ("changed by someone else —
  reload", the input kept) and an invalid one 422 with the problems next to the fields. Success
  redirects (POST → redirect → GET) with a signed flash message; the pages that show a secret
  once (service token, connector token, API token) are the POST's own answer, never cached.
- A write the service's lock-out guard refuses (it would remove the signed-in admin's own
  access) gets, whatever the form, one 422 page (``lockout.html``) that explains why and re-posts
  the same fields with a "save anyway" checkbox (``force``) and a fresh CSRF token.

Routes take object names as query or form fields, never as path segments, so any name works.

The views live in one module per area (``dashboard``, ``applications`` with policies,
``objects``: groups and identity providers, ``tunnels``, ``tokens``: service and API tokens,
``admins``, ``logs``, ``tester``) over ``base`` (rendering, CSRF, flash, the write steps);
``app`` puts them together and registers every route in one place.
"""

from zerogate.admin.panel.app import Panel, create_panel

__all__ = ["Panel", "create_panel"]
