"""The systemd unit of a connector (``zerogate connector service install``): text only, no I/O.

The token never appears in the unit, nor on any command line: systemd reads the token file
(root's, mode 0600) and hands it to the service as a credential (``LoadCredential=``), which
the connector reads with ``--token-file %d/token`` (``%d``: the service's credentials
directory, readable only by the service). The service runs as a transient user
(``DynamicUser=yes``) with no capabilities, a read-only file system, no home directories, no
devices, no new privileges and the system-service system calls only: a connector needs
nothing but outbound TCP to the edge and the origins it forwards to.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

__all__ = ["HARDENING", "ServiceUnit", "render_unit", "unit_name"]

#: a unit name part: letters, digits, ``-``, ``_``, ``.`` (what ``--name`` accepts)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: the sandbox every connector unit gets (``systemd.exec(5)``); each line is a setting a
#: connector never needs the opposite of
HARDENING = (
    "DynamicUser=yes",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
)


def unit_name(name: str) -> str:
    """``zerogate-connector-NAME.service``; ``ValueError`` for a name systemd would not take
    as it is (or that could leave the unit directory)."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r}: a service name is 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return f"zerogate-connector-{name}.service"


@dataclass(frozen=True)
class ServiceUnit:
    """What goes into one connector unit.

    ``command``: the connector's program as argv words (``/usr/bin/zerogate`` or
    ``/path/python -m zerogate``); ``run_args``: the options of ``connector run`` after the
    token file (``--url …`` or ``--config …``, ``--edge …``, ...); ``token_file``: the root-only
    file systemd loads the token from; ``grace_seconds``: ``--grace-period``, so systemd waits
    for in-flight requests before it kills."""

    name: str
    command: tuple[str, ...]
    run_args: tuple[str, ...]
    token_file: str
    grace_seconds: float = 30.0


def _exec_word(word: str) -> str:
    """One word of ``ExecStart=``: quoted as systemd reads it (``systemd.service(5)``,
    "Command lines"), with ``%`` (specifiers) and ``$`` (variables) taken literally."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    if escaped and not re.search(r"[\s'\";]", word):
        return escaped
    return f'"{escaped}"'


def render_unit(unit: ServiceUnit) -> str:
    """The unit file's text (``ValueError`` for a name or path systemd cannot take); an empty
    ``name`` is the machine's one connector (``zerogate-connector.service``)."""
    if unit.name:
        unit_name(unit.name)
    if not unit.token_file.startswith("/") or any(c in unit.token_file for c in ":\n%$ "):
        raise ValueError(f"{unit.token_file!r}: the token file must be an absolute plain path")
    if not unit.command or not unit.command[0].startswith("/"):
        raise ValueError("the connector's program must be an absolute path")
    # every word quoted literally but the one specifier we mean: %d, the credentials folder
    words = [
        *(_exec_word(w) for w in unit.command),
        "connector",
        "run",
        "--token-file",
        "%d/token",
        *(_exec_word(w) for w in unit.run_args),
    ]
    exec_start = " ".join(words)
    stop = int(unit.grace_seconds) + 15
    lines = [
        "# Written by `zerogate connector service install`; `... service uninstall` removes it.",
        "# The token is not in this file: systemd loads it from the root-only file below and",
        "# hands it to the service as a credential (%d/token).",
        "[Unit]",
        f"Description=zerogate connector {unit.name}".rstrip(),
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_start}",
        f"LoadCredential=token:{unit.token_file}",
        "Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
        "Restart=always",
        "RestartSec=5s",
        "KillMode=mixed",
        f"TimeoutStopSec={stop}s",
        *HARDENING,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def command_line(words: tuple[str, ...]) -> str:
    """Words as a shell would show them (for messages)."""
    return shlex.join(words)
