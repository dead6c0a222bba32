"""Attack tests for hostile YAML (issue 17, item 4): a billion-laughs file, one huge anchor quoted
many times, deep nesting and an oversized file each end in exit 2 with one short, clear problem
within a second of zerogate's own work — through the real command (`check`, `apply`,
`connector run --config`), each run in a subprocess with a generous bound."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zerogate.connector import ingress
from zerogate.model import ConfigError, load_text
from zerogate.model.safe_yaml import MAX_DEPTH, MAX_FILE_BYTES
from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id


def _laughs() -> str:
    """The classic 10 × 9 nested-alias bomb (~400 bytes, 10^9 values once expanded)."""
    lines = ['lol0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "billion-laughs": (_laughs(), "too large once its aliases"),
    "huge-anchor": (
        "session_duration: &x " + "A" * 900_000 + "\nadmins: [" + ", ".join(["*x"] * 200) + "]\n",
        "too large once its aliases",  # 180 MB of text once expanded
    ),
    "deep-flow": ("applications: " + "[" * 50_000 + "]" * 50_000 + "\n", "deeper than"),
    "deep-block": (
        "groups:\n" + "".join("  " * i + "-\n" for i in range(1, 500)),
        "deeper than",
    ),
    "oversized": ("# " + "x" * (MAX_FILE_BYTES + 10) + "\n", "larger than"),
}

#: generous: a Python start plus zerogate's imports on a busy shared machine
BOUND_SECONDS = 20.0
#: "one clear message": the problem plus the summary line, nowhere near megabytes (a file
#: with 200 invalid values lists 50 of them, each cut short)
MAX_STDERR = 16_000


def _zerogate(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250", "ZEROGATE_TUNNEL_TOKEN": ""}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "zerogate", *args],
        capture_output=True,
        text=True,
        timeout=BOUND_SECONDS * 3,
        env=env,
        check=False,
    )
    return done, time.monotonic() - started


def _assert_refused(done: subprocess.CompletedProcess[str], elapsed: float, expect: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[:2000])
    assert "Traceback" not in done.stderr
    assert len(done.stderr) < MAX_STDERR, done.stderr[:3000]
    assert expect in done.stderr
    assert elapsed < BOUND_SECONDS, elapsed


@pytest.mark.parametrize("bomb", sorted(BOMBS))
@pytest.mark.parametrize("command", ["check", "apply", "connector"])
def test_hostile_yaml_is_refused_quickly_through_the_cli(
    tmp_path: Path, bomb: str, command: str
) -> None:
    text, expect = BOMBS[bomb]
    if command == "connector" and bomb == "huge-anchor":
        text = "ingress:\n" + "".join(
            f"  - {{hostname: {'&x ' + 'a' * 900_000 if i == 0 else '*x'}, service: *x}}\n"
            for i in range(200)
        )
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    if command == "check":
        done, elapsed = _zerogate("check", "-c", str(path))
    elif command == "apply":
        (tmp_path / "bomb.yaml").write_text(f"storage: sqlite:///{tmp_path}/zg.db\n" + text)
        done, elapsed = _zerogate("apply", "-c", str(path))
    else:
        token = TunnelToken(new_tunnel_id(), new_secret(), ("127.0.0.1:1",)).encode()
        done, elapsed = _zerogate("connector", "run", "--token", token, "--config", str(path))
    _assert_refused(done, elapsed, expect)
    if command == "apply":
        assert not (tmp_path / "zg.db").exists(), "nothing reaches the store"


@pytest.mark.parametrize("bomb", ["billion-laughs", "deep-flow", "deep-block"])
def test_hostile_yaml_in_process_is_quick(bomb: str) -> None:
    text, expect = BOMBS[bomb]
    for load in (load_text, ingress.load_text):
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            load(text)
        assert time.monotonic() - started < 1.0
        assert expect in str(caught.value)
        assert len(caught.value.problems) == 1


def test_values_quoted_in_problems_are_shortened() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text("session_duration: " + "A" * 100_000 + "\n")
    assert len(str(caught.value)) < 400
    assert "(100000 characters)" in str(caught.value)


def test_an_anchor_quoted_many_times_gives_a_short_message(tmp_path: Path) -> None:
    """Under the expansion cap: 201 problems, 50 listed, each value cut to 80 characters."""
    path = tmp_path / "many.yaml"
    path.write_text(
        "session_duration: &x " + "A" * 9_000 + "\nadmins: [" + ", ".join(["*x"] * 200) + "]\n"
    )
    done, elapsed = _zerogate("check", "-c", str(path))
    _assert_refused(done, elapsed, "... and 151 more problems")
    assert "201 problems; nothing was applied" in done.stderr


def test_nesting_up_to_the_limit_and_aliases_still_load() -> None:
    nested = "x: " + "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2)
    with pytest.raises(ConfigError) as caught:  # an unknown key, not a nesting problem
        load_text(nested + "\n")
    assert "unknown key 'x'" in str(caught.value)
    loaded = load_text(
        "groups:\n"
        "  - name: a\n    include: &rules [{email: [a@example.com]}]\n"
        "  - name: b\n    include: *rules\n"
        "  - name: c  # '[[[' in a comment and ']]]' in '[[quotes]]'\n"
        "    include: [{email: [c@example.com]}]  # [[[ not nesting\n"
        "applications:\n"
        "  - {name: v6, domain: v6.example.com, origin: 'http://[::1]:8080',\n"
        "     policies: [{name: p, decision: allow, include: [{group: [c]}]}]}\n"
    )
    groups = loaded.config.objects().groups
    assert [g.name for g in groups] == ["a", "b", "c"]
