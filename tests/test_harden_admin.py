"""Attack tests for secret references written through the admin API / panel (issue 17, item 3):
an admin or read-write API token must not point an identity provider's ``client_secret_env`` at
any of the server's variables (``PATH``, another provider's secret), and "test connection" must
not reveal whether a variable outside the allowed prefix exists."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import test_admin_panel_unit as panel_unit
from zerogate.admin.service import Actor, AdminService, Invalid
from zerogate.model.loader import validate_objects
from zerogate.model.objects import Settings
from zerogate.store import Store

store = panel_unit.store
service = panel_unit.service
app = panel_unit.app
admin = panel_unit.admin

ME = Actor("ops@example.test", "192.0.2.1")


def idp(name: str, env: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "type": "oidc",
        "issuer": "https://idp.test",
        "client_id": name,
    }
    if env is not None:
        spec["client_secret_env"] = env
    return spec


@pytest.mark.parametrize("env", ["PATH", "HOME", "OKTA_CLIENT_SECRET", "ZEROGATE_SECRET_"])
async def test_api_cannot_name_a_variable_outside_the_prefix(
    service: AdminService, env: str
) -> None:
    with pytest.raises(Invalid) as caught:
        await service.create("identity_providers", idp("evil", env), ME)
    (problem,) = caught.value.problems
    assert "client_secret_env" in problem.where
    assert "ZEROGATE_SECRET_" in problem.message
    assert env not in problem.message or env == "ZEROGATE_SECRET_"
    names = [i.name for i in await service.items("identity_providers")]
    assert "evil" not in names


async def test_api_cannot_borrow_another_providers_secret(service: AdminService) -> None:
    good = await service.create("identity_providers", idp("kc", "ZEROGATE_SECRET_KC"), ME)
    assert good.spec["client_secret_env"] == "ZEROGATE_SECRET_KC"
    with pytest.raises(Invalid, match="names a secret") as caught:
        await service.create("identity_providers", idp("evil", "ZEROGATE_SECRET_KC"), ME)
    assert "the secret of 'kc' already" in caught.value.problems[0].message
    okta = await service.get("identity_providers", "okta")
    with pytest.raises(Invalid):
        await service.update(
            "identity_providers",
            "okta",
            {**okta.spec, "client_secret_env": "ZEROGATE_SECRET_KC"},
            version=okta.version,
            actor=ME,
        )


async def test_a_reference_from_the_file_may_stay_but_not_be_changed(store: Store) -> None:
    """The file (applied with `zerogate apply`) may name any variable; an admin editing that
    provider keeps it, but cannot change it to another non-allowed one."""
    seed = copy.deepcopy(panel_unit.SEED)
    seed["identity_providers"][1]["client_secret_env"] = "OKTA_SECRET"
    await store.apply(validate_objects(seed), actor="file", source="cli")
    service = AdminService(store)
    okta = await service.get("identity_providers", "okta")
    kept = await service.update(
        "identity_providers",
        "okta",
        {**okta.spec, "display_name": "Okta SSO"},
        version=okta.version,
        actor=ME,
    )
    assert kept.spec["client_secret_env"] == "OKTA_SECRET"
    with pytest.raises(Invalid, match="names a secret"):
        await service.update(
            "identity_providers",
            "okta",
            {**kept.spec, "client_secret_env": "PATH"},
            version=kept.version,
            actor=ME,
        )


async def test_a_kept_reference_cannot_follow_the_provider_to_another_issuer(
    store: Store,
) -> None:
    """Second security review: changing only the issuer of a provider whose secret comes from
    the file (any variable) would send that secret to the new issuer's token endpoint. The
    reference counts as new then, and has to pass the same checks."""
    seed = copy.deepcopy(panel_unit.SEED)
    seed["identity_providers"][1]["client_secret_env"] = "OKTA_SECRET"
    await store.apply(validate_objects(seed), actor="file", source="cli")
    service = AdminService(store)
    okta = await service.get("identity_providers", "okta")
    moved = {**okta.spec, "issuer": "https://idp.attacker.example"}
    with pytest.raises(Invalid, match="names a secret") as caught:
        await service.update("identity_providers", "okta", moved, version=okta.version, actor=ME)
    assert "client_secret_env" in caught.value.problems[0].where
    after = await service.get("identity_providers", "okta")
    assert after.spec["issuer"] == okta.spec["issuer"]


ATTACKER = "https://idp.attacker.example"


async def _okta_with(store: Store, env: str, issuer: str = "https://idp.test") -> AdminService:
    """okta from the file, its secret in ``env`` (under the prefix)."""
    seed = copy.deepcopy(panel_unit.SEED)
    seed["identity_providers"][1].update(client_secret_env=env, issuer=issuer)
    await store.apply(validate_objects(seed), actor="file", source="cli")
    return AdminService(store)


async def _edit(service: AdminService, name: str, **fields: Any) -> Any:
    item = await service.get("identity_providers", name)
    spec = {k: v for k, v in {**item.spec, **fields}.items() if v is not None}
    return await service.update("identity_providers", name, spec, version=item.version, actor=ME)


async def test_a_prefixed_variable_cannot_follow_its_provider_to_another_issuer(
    store: Store,
) -> None:
    """Third security review: under the prefix, changing only the issuer was allowed, and the
    next login or "test connection" sent the variable's value to the attacker's token
    endpoint. The variable stays bound to the issuer the file gave it."""
    service = await _okta_with(store, "ZEROGATE_SECRET_OKTA")
    with pytest.raises(Invalid, match="names a secret") as caught:
        await _edit(service, "okta", issuer=ATTACKER)
    (problem,) = caught.value.problems
    assert "client_secret_env" in problem.where
    assert "only the configuration file" in problem.message
    assert (await service.get("identity_providers", "okta")).spec["issuer"] == "https://idp.test"
    # control: other fields still change, the reference kept
    kept = await _edit(service, "okta", display_name="Okta SSO")
    assert kept.spec["client_secret_env"] == "ZEROGATE_SECRET_OKTA"


async def test_a_variable_taken_off_its_provider_keeps_its_issuer(store: Store) -> None:
    """The steps around the rule above: take the variable off, move the issuer, name the
    variable again (or name it on a new provider of the attacker's): refused each time; the
    variable may come back only with the issuer it had."""
    service = await _okta_with(store, "ZEROGATE_SECRET_OKTA")
    await _edit(service, "okta", client_secret_env=None)
    await _edit(service, "okta", issuer=ATTACKER)
    with pytest.raises(Invalid, match="names a secret"):
        await _edit(service, "okta", client_secret_env="ZEROGATE_SECRET_OKTA")
    evil = {**idp("evil", "ZEROGATE_SECRET_OKTA"), "issuer": ATTACKER}
    with pytest.raises(Invalid, match="names a secret"):
        await service.create("identity_providers", evil, ME)
    assert "evil" not in [i.name for i in await service.items("identity_providers")]
    await _edit(service, "okta", issuer="https://idp.test")
    back = await _edit(service, "okta", client_secret_env="ZEROGATE_SECRET_OKTA")
    assert back.spec["client_secret_env"] == "ZEROGATE_SECRET_OKTA"


async def test_the_file_moves_a_variable_to_another_issuer(store: Store) -> None:
    """The file may pair a variable with a new issuer; from then on that issuer is its own."""
    service = await _okta_with(store, "ZEROGATE_SECRET_OKTA")
    await _edit(service, "okta", display_name="seen once")  # bound to https://idp.test
    service = await _okta_with(store, "ZEROGATE_SECRET_OKTA", issuer="https://new-idp.test")
    await _edit(service, "okta", client_secret_env=None)
    back = await _edit(service, "okta", client_secret_env="ZEROGATE_SECRET_OKTA")
    assert back.spec["issuer"] == "https://new-idp.test"
    with pytest.raises(Invalid, match="names a secret"):
        await _edit(service, "okta", issuer="https://idp.test")


async def test_a_variable_an_admin_names_first_is_bound_to_its_issuer(
    service: AdminService,
) -> None:
    await service.create("identity_providers", idp("kc", "ZEROGATE_SECRET_KC"), ME)
    await _edit(service, "kc", client_secret_env=None)
    other = {**idp("kc2", "ZEROGATE_SECRET_KC"), "issuer": ATTACKER}
    with pytest.raises(Invalid, match="names a secret"):
        await service.create("identity_providers", other, ME)
    same = await service.create("identity_providers", idp("kc2", "ZEROGATE_SECRET_KC"), ME)
    assert same.spec["client_secret_env"] == "ZEROGATE_SECRET_KC"


async def test_the_prefix_comes_from_the_settings(store: Store) -> None:
    settings = Settings.model_validate({"secret_env_prefix": "ACME_IDP_"})
    service = AdminService(store, secret_env_prefix=settings.secret_env_prefix)
    with pytest.raises(Invalid, match="names a secret"):
        await service.create("identity_providers", idp("a", "ZEROGATE_SECRET_A"), ME)
    made = await service.create("identity_providers", idp("a", "ACME_IDP_A"), ME)
    assert made.spec["client_secret_env"] == "ACME_IDP_A"
    with pytest.raises(ValueError, match="secret_env_prefix"):
        Settings.model_validate({"secret_env_prefix": ""})


async def test_panel_refuses_the_reference_and_test_connection_reveals_nothing(
    admin: panel_unit.Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/identity-providers/save",
        {**idp("evil", "PATH"), "csrf": csrf, "scopes": "openid email"},
    )
    assert reply.status == 422
    assert "ZEROGATE_SECRET_" in reply.text

    # a provider the file configured with a variable outside the prefix
    seed = copy.deepcopy(panel_unit.SEED)
    seed["identity_providers"][1]["client_secret_env"] = "SOME_OTHER_VARIABLE"
    await store.apply(validate_objects(seed), actor="file", source="cli")
    pages = []
    for present in (True, False):
        if present:
            monkeypatch.setenv("SOME_OTHER_VARIABLE", "value")
        else:
            monkeypatch.delenv("SOME_OTHER_VARIABLE", raising=False)
        page = await admin.post("/admin/identity-providers/test", {"csrf": csrf, "name": "okta"})
        assert page.status == 200
        pages.append(page.text.replace(csrf, ""))
    assert pages[0] == pages[1]
    assert "is set" not in pages[0] and "NOT set" not in pages[0]
    assert "not checked" in pages[0]


def test_connector_reads_its_token_from_a_file(tmp_path: Path) -> None:
    """Issue 17 item 6: the token can stay off the command line (``ps``, shell history)."""
    from typer.testing import CliRunner

    from zerogate.cli.main import app
    from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id

    token = TunnelToken(new_tunnel_id(), new_secret(), ("127.0.0.1:1",)).encode()
    token_file = tmp_path / "office.token"
    token_file.write_text(token + "\n")
    env = {"ZEROGATE_TUNNEL_TOKEN": ""}
    runner = CliRunner()
    # the token is read and decoded: the run gets as far as the ingress choice
    read = runner.invoke(app, ["connector", "run", "--token-file", str(token_file)], env=env)
    assert read.exit_code == 2 and "exactly one of --url" in read.output
    broken = tmp_path / "broken.token"
    broken.write_text("zgt1_not-a-token")
    bad = runner.invoke(app, ["connector", "run", "--token-file", str(broken)], env=env)
    assert bad.exit_code == 2 and "--token" in bad.output
    missing = runner.invoke(
        app, ["connector", "run", "--token-file", str(tmp_path / "nope")], env=env
    )
    assert missing.exit_code == 2 and "cannot read" in missing.output
    both = runner.invoke(
        app, ["connector", "run", "--token-file", str(token_file), "--token", token], env=env
    )
    assert both.exit_code == 2 and "once" in both.output


@pytest.mark.parametrize(
    "amr", [[f"m{i}" for i in range(20_000)], ["x" * 300], [f"method-{i}" for i in range(17)]]
)
def test_an_oversized_amr_claim_is_refused(amr: list[str]) -> None:
    """Issue 17 item 6: 20,000 ``amr`` entries used to become a 64 KiB cookie and flow into
    every application's JWT; like ``groups``, the list claims have a cap."""
    from test_oidc import claims
    from zerogate.identity import oidc

    with pytest.raises(oidc.ClaimsError, match="more than zerogate carries"):
        oidc.identity_from_claims(claims(amr=amr), "groups")
    assert oidc.identity_from_claims(claims(amr=["pwd", "mfa", "otp"]), None).amr == (
        "pwd",
        "mfa",
        "otp",
    )
