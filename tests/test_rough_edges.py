"""Small things a new admin or user meets (issue #16, "rough edges"): words that blame the
right thing, and names people understand."""

from __future__ import annotations

from zerogate.edge.pipeline import network_only
from zerogate.model.objects import ADMIN_APPLICATION, Objects
from zerogate.policy import Context, Identity, compile_snapshot
from zerogate.portal.handlers import shown_name


def test_the_block_page_blames_the_network_only_when_the_network_decided() -> None:
    snap = compile_snapshot(
        Objects.model_validate(
            {
                "applications": [
                    {
                        "name": "wiki",
                        "domain": "wiki.example.test",
                        "origin": "http://127.0.0.1:9",
                        "policies": [
                            {
                                "name": "embargo",
                                "decision": "block",
                                "include": [{"ip": ["198.51.100.0/24"]}],
                            },
                            {
                                "name": "contractors",
                                "decision": "block",
                                "include": [{"email_domain": ["contractor.test"]}],
                            },
                            {
                                "name": "staff",
                                "decision": "allow",
                                "include": [{"email_domain": ["example.test"]}],
                            },
                        ],
                    }
                ]
            }
        )
    )
    app = snap.apps["wiki"]

    def blocked_by(email: str, ip: str) -> str | None:
        verdict = snap.decide(app, Identity.of(email, "otp", (), ()), Context(ip=ip))
        assert verdict.decision == "block"
        return verdict.policy

    assert network_only(app, blocked_by("ann@example.test", "198.51.100.7"))
    assert not network_only(app, blocked_by("bob@contractor.test", "192.0.2.1"))
    assert not network_only(app, blocked_by("eve@elsewhere.test", "192.0.2.1"))  # default deny


def test_the_admin_application_is_named_for_people() -> None:
    assert shown_name(ADMIN_APPLICATION) == "the zerogate admin panel"
    assert shown_name("wiki") == "wiki"


def test_server_help_describes_what_runs() -> None:
    from typer.testing import CliRunner

    from zerogate.cli.main import app

    text = CliRunner().invoke(app, ["server", "--help"], env={"COLUMNS": "200"}).output
    assert "(later)" not in text
    for part in ("admin panel", "tunnel listener", "--config", "required", "--workers"):
        assert part in text, part
