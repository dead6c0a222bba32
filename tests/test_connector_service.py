"""``zerogate connector service install / uninstall`` (issue #15, services): a hardened systemd
unit whose token is a root-only file systemd hands to the service as a credential, never an
argument; checked by ``systemd-analyze verify`` (Debian's systemd) and by reading the unit.

``--root DIR`` writes under a temporary folder and runs no systemctl, so the tests touch
nothing of this machine's systemd."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from harness import wait_until
from zerogate.cli.main import app
from zerogate.connector.service import HARDENING, ServiceUnit, render_unit
from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id

UNIT = "etc/systemd/system/zerogate-connector-office.service"
TOKEN = "etc/zerogate/connector-office.token"
INSTALL_AS_NOBODY = ("connector", "service", "install", "--url", "http://x", "--name", "nobody")


@pytest.fixture
def token() -> TunnelToken:
    return TunnelToken(new_tunnel_id(), new_secret(), ("edge.example.com:7844",))


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        app, ["connector", "service", *args], env={"ZEROGATE_TUNNEL_TOKEN": "", **(env or {})}
    )


def install(root: Path, token: TunnelToken, *more: str) -> Result:
    return cli(
        "install",
        "--name",
        "office",
        "--url",
        "http://127.0.0.1:8080",
        "--root",
        str(root),
        *more,
        env={"ZEROGATE_TUNNEL_TOKEN": token.encode()},
    )


def sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """The unit as (key, value) pairs per section, repeated keys kept (systemd's syntax)."""
    found: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            assert current not in found, f"section {current} twice"
            found[current] = []
            continue
        key, sep, value = line.partition("=")
        assert sep and key and key == key.strip(), line
        found[current].append((key, value))
    return found


def test_install_writes_a_root_only_token_and_a_hardened_unit(
    tmp_path: Path, token: TunnelToken
) -> None:
    result = install(tmp_path, token)
    assert result.exit_code == 0, result.output
    token_file, unit_file = tmp_path / TOKEN, tmp_path / UNIT
    assert token_file.read_text().strip() == token.encode()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # a folder made here is 0755: the service (a transient user) reads its ingress file there
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o755
    assert sorted(p.name for p in token_file.parent.iterdir()) == [token_file.name]
    assert stat.S_IMODE(unit_file.stat().st_mode) == 0o644
    text = unit_file.read_text()
    assert token.encode() not in text and token.secret not in text
    unit = sections(text)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    exec_start = dict(service)["ExecStart"]
    # the token comes from systemd's credential, loaded from the root-only file
    assert " connector run --token-file %d/token --url http://127.0.0.1:8080 " in exec_start
    assert ("LoadCredential", "token:/etc/zerogate/connector-office.token") in service
    assert exec_start.split()[0].startswith("/")
    for setting in HARDENING:
        assert tuple(setting.split("=", 1)) in service, setting
    assert ("WantedBy", "multi-user.target") in unit["Install"]


def test_install_keeps_an_existing_folder_s_mode(tmp_path: Path, token: TunnelToken) -> None:
    """/etc/zerogate 0750 root:zerogate holds the server's files (deploy.md) and the service's
    ingress file: installing a connector must not make it root-only (0700), which locked out
    the server and the sandboxed connector alike; the token file alone is root-only."""
    folder = tmp_path / "etc/zerogate"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o750)
    ingress = folder / "ingress.yaml"
    ingress.write_text("ingress:\n  - service: http://127.0.0.1:8080\n")
    os.chmod(ingress, 0o644)
    result = install(tmp_path, token)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / TOKEN).stat().st_mode) == 0o600


def test_a_temporary_file_opened_beforehand_never_receives_the_token(
    tmp_path: Path, token: TunnelToken
) -> None:
    """Someone who made (and holds open) the temporary file's name before the install, as the
    fixed name ``.NAME.new`` allowed, reads nothing: the token goes to a new file of a random
    name (O_EXCL), renamed over the token file."""
    folder = tmp_path / "etc/zerogate"
    folder.mkdir(parents=True)
    planted = folder / ".connector-office.token.new"
    planted.write_bytes(b"")
    os.chmod(planted, 0o666)
    with planted.open("rb") as held:
        result = install(tmp_path, token)
        assert result.exit_code == 0, result.output
        assert held.read() == b""
    assert (tmp_path / TOKEN).read_text().strip() == token.encode()
    assert sorted(p.name for p in folder.iterdir()) == [planted.name, "connector-office.token"]


def test_the_generated_unit_passes_systemd_analyze_verify(
    tmp_path: Path, token: TunnelToken
) -> None:
    """The unit as systemd itself reads it: every key known, every value parsed, the program
    executable. (systemd-analyze ships with Debian's systemd; where it is missing the
    structure is still checked by the test above.)"""
    assert install(tmp_path, token, "--edge", "203.0.113.7:7844").exit_code == 0
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert os.environ.get("CI") != "true", "CI must have systemd-analyze (Debian systemd)"
        return
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # unknown keys and unparsable values are only warnings: none may appear
    assert "zerogate-connector-office.service" not in done.stderr, done.stderr
    # control: systemd-analyze does catch a bad setting in this same file
    broken = tmp_path / "broken" / "zerogate-connector-office.service"
    broken.parent.mkdir()
    broken.write_text((tmp_path / UNIT).read_text().replace("ProtectSystem=strict", "ProtectX=1"))
    bad = subprocess.run(
        [analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "ProtectX" in bad.stderr, bad.stderr


def test_print_shows_the_unit_and_writes_nothing(tmp_path: Path, token: TunnelToken) -> None:
    result = install(tmp_path, token, "--print")
    assert result.exit_code == 0, result.output
    assert "LoadCredential=token:/etc/zerogate/connector-office.token" in result.stdout
    assert token.encode() not in result.stdout
    assert not any(tmp_path.iterdir())


def test_a_token_on_the_command_line_is_refused(tmp_path: Path, token: TunnelToken) -> None:
    text = token.encode()
    result = cli("install", "--url", "http://x", "--token", text, "--root", str(tmp_path))
    assert result.exit_code == 2
    assert "shows in `ps`" in result.output
    # hidden in another option, it would be written into the unit: refused too
    sneaky = install(tmp_path, token, "--metrics", f"127.0.0.1:1{token.secret}")
    assert sneaky.exit_code == 2
    assert "must not be part of any option" in sneaky.output
    assert not any(tmp_path.iterdir())


def test_without_a_token_nothing_is_written(tmp_path: Path) -> None:
    result = cli("install", "--url", "http://x", "--root", str(tmp_path))
    assert result.exit_code == 2
    assert "--token-file FILE or ZEROGATE_TUNNEL_TOKEN" in result.output
    assert not any(tmp_path.iterdir())


def test_the_token_file_is_copied_from_token_file(tmp_path: Path, token: TunnelToken) -> None:
    given = tmp_path / "given.token"
    given.write_text(token.encode() + "\n")
    root = tmp_path / "root"
    result = cli("install", "--url", "http://x", "--token-file", str(given), "--root", str(root))
    assert result.exit_code == 0, result.output
    written = root / "etc/zerogate/connector.token"
    assert written.read_text().strip() == token.encode()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert (root / "etc/systemd/system/zerogate-connector.service").is_file()


def test_files_the_sandbox_cannot_see_are_refused(tmp_path: Path, token: TunnelToken) -> None:
    rules = tmp_path / "ingress.yaml"
    rules.write_text("ingress:\n  - service: http://127.0.0.1:8080\n")
    result = cli(
        "install",
        "--config",
        str(rules),
        "--root",
        str(tmp_path / "root"),
        env={"ZEROGATE_TUNNEL_TOKEN": token.encode()},
    )
    assert result.exit_code == 2
    assert "which the service cannot see" in result.output


@pytest.mark.parametrize("name", ["../x", "a b", "", "x" * 65, "-x"])
def test_a_name_that_could_leave_the_unit_folder_is_refused(tmp_path: Path, name: str) -> None:
    result = cli("install", "--name", name, "--url", "http://x", "--print")
    assert result.exit_code == 2
    assert "--name" in result.output


def test_uninstall_removes_the_unit_and_the_token(tmp_path: Path, token: TunnelToken) -> None:
    assert install(tmp_path, token).exit_code == 0
    result = cli("uninstall", "--name", "office", "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / UNIT).exists() and not (tmp_path / TOKEN).exists()
    again = cli("uninstall", "--name", "office", "--root", str(tmp_path))
    assert again.exit_code == 1 and "not installed" in again.output


def test_a_user_other_than_root_is_told_to_use_sudo(tmp_path: Path) -> None:
    """Run as uid 65534 (nobody), keeping only the right to read files (this Python may live
    under root's home): the command refuses before writing anything."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is part of Debian's base system"
    if os.geteuid() != 0:  # a developer's own account: the refusal is what it gets anyway
        prefix: list[str] = []
    else:
        prefix = [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
        ]
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "zerogate", *INSTALL_AS_NOBODY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "HOME": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    assert "must run as root" in done.stderr and "--print" in done.stderr
    assert not Path("/etc/zerogate/connector-nobody.token").exists()


def test_words_are_quoted_as_systemd_reads_them() -> None:
    unit = ServiceUnit(
        name="x",
        command=("/opt/zero gate/bin/zerogate",),
        run_args=("--config", "/etc/zerogate/100%$HOME.yaml"),
        token_file="/etc/zerogate/connector-x.token",
    )
    exec_start = dict(sections(render_unit(unit))["Service"])["ExecStart"]
    assert exec_start.startswith('"/opt/zero gate/bin/zerogate" connector run --token-file %d/')
    # no specifier and no variable expansion in what the user gave
    assert exec_start.endswith("--config /etc/zerogate/100%%$$HOME.yaml")
    with pytest.raises(ValueError, match="absolute"):
        render_unit(ServiceUnit(name="x", command=("zerogate",), run_args=(), token_file="/t"))


def test_the_example_in_configparser_terms_is_one_value_per_line(token: TunnelToken) -> None:
    """A cheap cross-check with another reader: every line is KEY=VALUE in three sections."""
    text = render_unit(
        ServiceUnit(
            name="office",
            command=("/usr/bin/zerogate",),
            run_args=("--url", "http://127.0.0.1:8080"),
            token_file="/etc/zerogate/connector-office.token",
        )
    )
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Service"]["DynamicUser"] == "yes"


def test_the_units_command_line_starts_a_connector_with_no_token_in_it(
    tmp_path: Path, token: TunnelToken
) -> None:
    """The unit's ``ExecStart=`` run as systemd would run it (``%d`` being the credentials
    folder with the token file in it): the connector accepts every option and starts, and its
    command line, as every local user sees it in ``/proc``, holds no part of the token."""
    tunnel = TunnelToken(token.tunnel_id, token.secret, ("127.0.0.1:1",))
    result = install(tmp_path, tunnel, "--metrics", "127.0.0.1:0", "--print")
    assert result.exit_code == 0, result.output
    exec_start = dict(sections(result.stdout)["Service"])["ExecStart"]
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "token").write_text(tunnel.encode() + "\n")
    (credentials / "token").chmod(0o400)
    argv = [w.replace("%d", str(credentials)) for w in shlex.split(exec_start)]
    log = tmp_path / "connector.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: "connector starting" in log.read_text() or proc.poll() is not None,
            timeout=30,
            what="the connector to start",
        )
        assert proc.poll() is None, log.read_text()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert tunnel.secret.encode() not in cmdline and b"zgt1_" not in cmdline
        assert f"tunnel={tunnel.tunnel_id}" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
