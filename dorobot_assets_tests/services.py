"""Real Dagster processes for the tests (webserver, daemon, `dorobot-assets ui`): started on
loopback in their own session, waited for with bounded waits, stopped by their process id."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DAGSTER_YAML_TEMPLATE = REPO / "dagster.yaml.template"

# Generous: the CI machine has 2 cores and the first start compiles nothing but imports a lot.
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dagster_home_with_template(home: Path) -> Path:
    """A DAGSTER_HOME holding the project's dagster.yaml, as the UI command sets it up."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_YAML_TEMPLATE, home / "dagster.yaml")
    return home


def service_env(**values) -> dict[str, str]:
    """The test's environment without the developer's DOROBOT_* settings, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOROBOT_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({k: str(v) for k, v in values.items()})
    return env


def session_members(session_id: int) -> set[int]:
    """Live processes of a session: a service and everything it started, even once orphaned."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[3]) == session_id:
                members.add(int(entry))
    return members


class Service:
    """One command running in the background with its output in ``log_path``."""

    def __init__(self, argv: list[str], env: dict, log_path: Path, cwd: Path, sigint_ignored: bool = False):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")

        def prepare():
            # As in a background job of a non-interactive shell (`cmd &` in a script).
            if sigint_ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=prepare,
        )
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 6000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_until(self, predicate, timeout: float, what: str, interval: float = 0.5):
        """Poll ``predicate`` until it returns something truthy; fail if this process dies first."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if not self.running():
                pytest.fail(f"{self.argv[0]} exited ({self.proc.returncode}) before {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(interval)

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send ``sig`` (None: send nothing) to the process; its exit code, or None if it did
        not exit in time."""
        if sig is not None and self.running():
            os.kill(self.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def leftovers(self) -> set[int]:
        """Processes of this service's session still running (none after a clean stop)."""
        return session_members(self.pid)

    def all_gone(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Wait until nothing of this service's session runs (a code server that lost its
        daemon exits at its next missed heartbeat, up to 20 s later)."""
        deadline = time.monotonic() + timeout
        while self.leftovers():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def describe_leftovers(self) -> str:
        lines = []
        for pid in sorted(self.leftovers()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            except OSError:
                continue
            lines.append(f"{pid}: {cmd}")
        return "\n".join(lines)

    def kill_leftovers(self) -> None:
        """Last-resort cleanup after a failed test: the session this service was started in."""
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.running():
            self.proc.wait(10)
        self._log.close()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False
