"""The installed command as a real subprocess: check-config on a good and a bad file, --version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

from Listener import __version__


def cli(*args: str) -> "subprocess.CompletedProcess[str]":
    command: List[str] = [sys.executable, "-m", "Listener", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_check_config_prints_the_effective_config_without_the_password(tmp_path: Path) -> None:
    config = tmp_path / "listener.toml"
    config.write_text('host = "broker.internal"\nport = 8883\npassword = "hunter2-secret"\nmax_concurrent_jobs = 4\n')
    done = cli("check-config", str(config), "--format", "json")
    assert done.returncode == 0, done.stderr
    effective = json.loads(done.stdout)
    assert effective["host"] == "broker.internal" and effective["port"] == 8883
    assert effective["max_concurrent_jobs"] == 4 and effective["password"] == "***"
    assert "hunter2-secret" not in done.stdout + done.stderr


def test_check_config_names_the_field_the_value_and_why(tmp_path: Path) -> None:
    config = tmp_path / "listener.toml"
    config.write_text('port = 70000\npassword = "hunter2-secret"\n')
    done = cli("check-config", str(config))
    assert done.returncode == 1
    assert "port" in done.stderr and "70000" in done.stderr and "65535" in done.stderr
    assert "hunter2-secret" not in done.stdout + done.stderr


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0 and __version__ in done.stdout
