"""The web panel's pure helpers: CSRF tokens and signed flash messages, the conversion between
HTML form fields and the objects' specs (the Include / Require / Exclude rule builder), the
placement of validation problems next to the fields they name, and the readable before → after
diff of the admin log. No I/O, no web framework: plain values in, plain values out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zerogate.model.loader import Problem
from zerogate.model.objects import SELECTORS

SECTIONS: tuple[str, ...] = ("include", "require", "exclude")
#: selectors that take no values (``everyone: true``)
BOOLEAN_SELECTORS = frozenset({"everyone", "any_service_token"})
#: what the selector drop-down says for each selector
SELECTOR_LABELS: dict[str, str] = {
    "everyone": "Everyone",
    "email": "Emails",
    "email_domain": "Email domains",
    "group": "Access groups",
    "ip": "IP ranges",
    "country": "Countries",
    "login_method": "Login methods (IdP names)",
    "idp_group": "IdP groups",
    "auth_method": "Authentication methods (amr)",
    "service_token": "Service tokens",
    "any_service_token": "Any valid service token",
}
assert set(SELECTOR_LABELS) == set(SELECTORS), "a selector of the model has no label"

CSRF_FIELD = "csrf"
#: the "save anyway" box a form is posted again with after the lock-out guard refused it
FORCE_FIELD = "force"
#: how long a rendered form may be submitted
CSRF_MAX_AGE = 8 * 3600
FLASH_COOKIE = "__zg_admin_flash"


# ---------------------------------------------------------------------------- CSRF and flash


def _mac(secret: bytes, purpose: str, *parts: str) -> str:
    message = "\x00".join((purpose, *parts)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def csrf_token(secret: bytes, session_id: str, now: float | None = None) -> str:
    """``<unix time>.<HMAC(secret, session id, time)>``: bound to one admin login session."""
    stamp = str(int(time.time() if now is None else now))
    return f"{stamp}.{_mac(secret, 'zerogate-admin-csrf', session_id, stamp)}"


def csrf_valid(secret: bytes, session_id: str, token: str, now: float | None = None) -> bool:
    """Whether ``token`` was made by ``csrf_token`` for this session less than
    ``CSRF_MAX_AGE`` seconds ago (and not in the future)."""
    stamp, dot, mac = token.partition(".")
    if not dot or not stamp.isdigit() or len(stamp) > 12:
        return False
    age = (time.time() if now is None else now) - int(stamp)
    if age > CSRF_MAX_AGE or age < -60:
        return False
    return hmac.compare_digest(mac, _mac(secret, "zerogate-admin-csrf", session_id, stamp))


def sign_flash(secret: bytes, kind: str, message: str) -> str:
    body = base64.urlsafe_b64encode(json.dumps([kind, message[:500]]).encode()).decode()
    return f"{body}.{_mac(secret, 'zerogate-admin-flash', body)}"


def open_flash(secret: bytes, value: str) -> tuple[str, str] | None:
    """The (kind, message) of a flash cookie, or ``None`` when absent or tampered with."""
    body, dot, mac = value.partition(".")
    if not dot or not hmac.compare_digest(mac, _mac(secret, "zerogate-admin-flash", body)):
        return None
    try:
        kind, message = json.loads(base64.urlsafe_b64decode(body.encode()))
    except (ValueError, TypeError):
        return None
    if kind not in ("ok", "error") or not isinstance(message, str):
        return None
    return kind, message


# ---------------------------------------------------------------------------- rule builder


def split_values(text: str) -> list[str]:
    """``"a@x.test, b@x.test"`` or one value per line → the values, blanks dropped."""
    return [part.strip() for part in re.split(r"[,\n\r]+", text) if part.strip()]


@dataclass
class RuleRow:
    """One row of the builder as the form shows it; ``errors`` are problems naming it."""

    selector: str = ""
    values: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class RuleForm:
    """The three sections of a rule set as rows (what the builder renders)."""

    rows: dict[str, list[RuleRow]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    #: for each section, the index of each row's rule in the spec (``None``: a blank row)
    spec_index: dict[str, list[int | None]] = field(
        default_factory=lambda: {s: [] for s in SECTIONS}
    )

    def with_blank_rows(self, extra: str | None = None) -> RuleForm:
        """One empty row per section to fill in (two in section ``extra``)."""
        for section in SECTIONS:
            wanted = 2 if section == extra else 1
            blanks = sum(1 for row in self.rows[section] if not row.selector)
            for _ in range(max(0, wanted - blanks)):
                self.rows[section].append(RuleRow())
                self.spec_index[section].append(None)
        return self


def rule_text(rule: Mapping[str, Any]) -> RuleRow:
    """A spec rule (``{"ip": ["10.0.0.0/8"]}``) as a builder row."""
    for selector, value in rule.items():
        if value is True:
            return RuleRow(selector, "")
        if isinstance(value, list):
            return RuleRow(selector, ", ".join(str(v) for v in value))
        return RuleRow(selector, str(value))
    return RuleRow()


def rules_from_spec(spec: Mapping[str, Any]) -> RuleForm:
    form = RuleForm()
    for section in SECTIONS:
        for index, rule in enumerate(spec.get(section) or []):
            form.rows[section].append(rule_text(rule))
            form.spec_index[section].append(index)
    return form


def rules_from_form(fields: Mapping[str, Sequence[str]]) -> tuple[dict[str, Any], RuleForm]:
    """The ``include``/``require``/``exclude`` lists of a spec from the builder's fields
    (``<section>_selector`` and ``<section>_values``, repeated once per row in order), and the
    rows to show again. Rows without a selector are ignored; values are kept as typed so that
    validation names what is wrong."""
    spec: dict[str, Any] = {}
    form = RuleForm()
    for section in SECTIONS:
        selectors = list(fields.get(f"{section}_selector", ()))
        values = list(fields.get(f"{section}_values", ()))
        values += [""] * (len(selectors) - len(values))
        rules: list[dict[str, Any]] = []
        for selector, text in zip(selectors, values, strict=False):
            selector = selector.strip()
            if not selector:
                if text.strip():
                    # values without a selector: keep them visible and say what is missing
                    form.rows[section].append(RuleRow("", text, ["choose a selector"]))
                    form.spec_index[section].append(None)
                continue
            form.rows[section].append(RuleRow(selector, text))
            form.spec_index[section].append(len(rules))
            if selector in BOOLEAN_SELECTORS:
                rules.append({selector: True})
            else:
                rules.append({selector: split_values(text)})
        spec[section] = rules
    return spec, form


def form_rule_errors(form: RuleForm) -> list[str]:
    """Problems the form itself found (before the service validates anything)."""
    return [
        f"{section}: values without a selector ({row.values!r}): choose a selector"
        for section in SECTIONS
        for row in form.rows[section]
        if not row.selector and row.errors
    ]


_RULE_WHERE = re.compile(r"\b(include|require|exclude)\[(\d+)\]")


def attach_problems(form: RuleForm, problems: Iterable[Problem]) -> list[Problem]:
    """Put each problem naming ``include[N]`` (etc.) on its row; the rest are returned."""
    rest: list[Problem] = []
    for problem in problems:
        found = _RULE_WHERE.search(problem.where)
        if found is None:
            rest.append(problem)
            continue
        section, index = found.group(1), int(found.group(2))
        try:
            row_at = form.spec_index[section].index(index)
        except ValueError:
            rest.append(problem)
            continue
        detail = problem.where[found.end() :].lstrip(".")
        form.rows[section][row_at].errors.append(
            f"{detail}: {problem.message}" if detail else problem.message
        )
    return rest


# ---------------------------------------------------------------------------- other objects


def first(fields: Mapping[str, Sequence[str]], name: str) -> str:
    values = fields.get(name) or [""]
    return values[0].strip()


def application_spec(
    fields: Mapping[str, Sequence[str]], stored: Mapping[str, Any] | None
) -> dict[str, Any]:
    """An application's spec from its form; policies, CORS and timeouts (edited elsewhere: the
    API or the YAML) are kept from the stored spec."""
    spec: dict[str, Any] = {"name": first(fields, "name"), "domain": first(fields, "domain")}
    target = first(fields, "target")
    if target == "origin":
        spec["origin"] = first(fields, "origin")
    elif target == "tunnel":
        spec["tunnel"] = first(fields, "tunnel")
    if first(fields, "idp_mode") == "some":
        spec["identity_providers"] = [v for v in fields.get("identity_providers", []) if v]
    if first(fields, "session_duration"):
        spec["session_duration"] = first(fields, "session_duration")
    if stored is not None:
        for kept in ("cors", "timeouts", "policies", "audience"):
            if kept in stored:
                spec[kept] = stored[kept]
    return spec


OIDC_FIELDS: tuple[str, ...] = (
    "preset",
    "issuer",
    "client_id",
    "client_secret_env",
    "token_endpoint_auth_method",
    "groups_claim",
    "display_name",
)


def idp_spec(fields: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": first(fields, "name"), "type": first(fields, "type")}
    if spec["type"] == "oidc":
        for name in OIDC_FIELDS:
            if first(fields, name):
                spec[name] = first(fields, name)
        scopes = [s for s in re.split(r"[\s,]+", first(fields, "scopes")) if s]
        if scopes:
            spec["scopes"] = scopes
    return spec


def idp_form(spec: Mapping[str, Any]) -> dict[str, str]:
    form = {"name": str(spec.get("name", "")), "type": str(spec.get("type", "onetimepin"))}
    for name in OIDC_FIELDS:
        form[name] = str(spec.get(name) or "")
    form["scopes"] = " ".join(spec.get("scopes") or [])
    return form


def tunnel_spec(fields: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return {"name": first(fields, "name"), "routes": split_values(first(fields, "routes"))}


def admin_entries(text: str) -> list[str]:
    """The admins list from its textarea: one email or ``group:NAME`` a line, blank lines
    dropped (a line is kept whole: a group name may hold spaces)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def service_token_spec(fields: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return {"name": first(fields, "name"), "duration": first(fields, "duration") or "8760h"}


def policy_spec(
    fields: Mapping[str, Sequence[str]],
) -> tuple[dict[str, Any], RuleForm]:
    rules, form = rules_from_form(fields)
    spec: dict[str, Any] = {
        "name": first(fields, "name"),
        "decision": first(fields, "decision"),
        **rules,
    }
    if first(fields, "session_duration"):
        spec["session_duration"] = first(fields, "session_duration")
    return spec, form


def group_spec(fields: Mapping[str, Sequence[str]]) -> tuple[dict[str, Any], RuleForm]:
    rules, form = rules_from_form(fields)
    return {"name": first(fields, "name"), **rules}, form


def parse_int(text: str, default: int | None = None) -> int | None:
    try:
        return int(text)
    except ValueError:
        return default


# ---------------------------------------------------------------------------- admin log diff


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A spec as ``{"policies[0].include[1].ip": "10.0.0.0/8, …"}``: lists of scalars stay one
    line, so a diff names the field that changed."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for index, inner in enumerate(value):
            out.update(flatten(inner, f"{prefix}[{index}]"))
    elif isinstance(value, list):
        out[prefix] = ", ".join(str(v) for v in value) if value else "[]"
    else:
        out[prefix] = json.dumps(value) if not isinstance(value, str) else value
    return out


@dataclass(frozen=True)
class DiffLine:
    field: str
    before: str | None
    after: str | None


def spec_diff(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[DiffLine]:
    """The fields that differ between two specs (``None`` on one side: added / removed)."""
    old = flatten(dict(before)) if before is not None else {}
    new = flatten(dict(after)) if after is not None else {}
    return [
        DiffLine(name, old.get(name), new.get(name))
        for name in sorted(set(old) | set(new), key=_field_order(old, new))
        if old.get(name) != new.get(name)
    ]


def _field_order(old: Mapping[str, str], new: Mapping[str, str]) -> Any:
    order = {name: i for i, name in enumerate([*old, *(n for n in new if n not in old)])}
    return lambda name: order[name]
