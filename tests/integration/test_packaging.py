"""What a user installs: a wheel built without deprecation warnings, with the SPDX licence and everything the
package's help refers to; an editable install that mypy can type-check against; the demo; the audit verdict."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.file_modules import load_file_module


ROOT = Path(__file__).resolve().parents[2]

USER_SCRIPT = '''
import asyncio
from typing import Any, Dict

from Listener import EventListener, EventListenerConfig, ReturnType, create_return_type


def processor(data: Dict[str, Any], job_id: str) -> ReturnType:
    return create_return_type({"job_id": job_id}, "results")


async def main() -> None:
    listener = EventListener(EventListenerConfig(host="localhost"))
    job_id: str = listener.generate_job_id()  # Optional[str]: mypy must see the package's types to object
    await listener.run(processor)


asyncio.run(main())
'''


def test_mypy_strict_type_checks_a_user_script_against_the_installed_package(tmp_path: Path) -> None:
    try:
        importlib.metadata.distribution("mqtt-event-listener")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mqtt-event-listener is not installed (make install installs it)")
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the dev extra)")
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(USER_SCRIPT), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    # Outside the repository, so Listener can only be found through the installation.
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", os.devnull,
                           str(script)], capture_output=True, text=True, cwd=str(tmp_path), env=env,  # noqa: S603
                          timeout=120)
    output = done.stdout + done.stderr
    assert "Cannot find implementation or library stub" not in output, output
    # The only error is the deliberate one, which mypy can report only with Listener's real types.
    assert done.returncode == 1, output
    assert 'Incompatible types in assignment (expression has type "str | None", variable has type "str")' in output
    assert "Found 1 error" in output


@pytest.mark.slow
def test_the_wheel_builds_without_warnings_and_holds_what_help_refers_to(tmp_path: Path) -> None:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is not installed (it is in the dev extra)")
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    shutil.copytree(ROOT / "Listener", source / "Listener", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copyfile(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(source)],  # noqa: S603
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "deprecated" not in output.lower() and "BuildBackendWarning" not in output, output
    [wheel] = tmp_path.glob("mqtt_event_listener-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "Listener/py.typed" in names and "Listener/ops/quiet_logs.py" in names
    # The dashboard's vendored uPlot (MIT), with its licence, served from the package
    dashboard_assets = {f"Listener/ops/dashboard/assets/{n}"
                        for n in ("uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE")}
    assert dashboard_assets <= names, sorted(dashboard_assets - names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: License ::" not in metadata
    help_text = subprocess.run([sys.executable, "-m", "Listener", "--help"], capture_output=True, text=True,  # noqa: S603
                               timeout=60, check=True).stdout
    assert ".md" not in help_text  # nothing the wheel does not ship


def test_make_demo_explains_what_it_shows() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_")}  # the embedded broker, always
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,  # noqa: S603
                          timeout=120, cwd=str(ROOT), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Demo finished: OK" in out
    before_jobs = out.split("-> publishing")[0].splitlines()
    assert len(before_jobs) > 5 and max(len(line) for line in before_jobs) < 120, "the config must be a readable block"
    assert '  topic                    = "demo/jobs"' in out
    assert '"job_id": null - the payload is not valid TOML' in out
    assert "keeps the result and completion time of its first run" in out
    next_steps = out.split("What to try next:")[1]
    assert next_steps.count(".venv/bin/mqtt-listener ") == 3


def load_audit() -> ModuleType:
    return load_file_module("audit_script", ROOT / "scripts" / "audit.py")


@pytest.mark.integration
@pytest.mark.unit
def test_audit_verdicts() -> None:
    audit = load_audit()
    not_found = '{"dependencies": [%s]}' % ", ".join(
        '{"name": "%s", "skip_reason": "Dependency not found on PyPI and could not be audited: %s (1.0)"}' % (n, n)
        for n in ("amqtt", "tomli"))
    editable = '{"name": "mqtt-event-listener", "skip_reason": "distribution marked as editable"}'
    assert audit.verdict(0, not_found, "") == (0, audit.SKIPPED_OFFLINE)
    assert audit.verdict(1, "", "requests.exceptions.ConnectionError: Max retries exceeded") == (0, audit.SKIPPED_OFFLINE)
    clean = '{"dependencies": [{"name": "amqtt", "version": "0.12.1", "vulns": []}, %s]}' % editable
    assert audit.verdict(0, clean, "") == (0, "dependency audit: no known vulnerabilities in 1 packages")
    vulnerable = '{"dependencies": [{"name": "amqtt", "version": "0.12.1", "vulns": [{"id": "PYSEC-1"}]}]}'
    code, message = audit.verdict(1, vulnerable, "")
    assert code == 1 and "amqtt 0.12.1: PYSEC-1" in message
    partly = ('{"dependencies": [{"name": "amqtt", "version": "0.12.1", "vulns": []}, '
              '{"name": "private", "skip_reason": "Dependency not found on PyPI and could not be audited"}]}')
    assert audit.verdict(0, partly, "")[0] == 1
    assert audit.verdict(2, "", "usage: pip-audit ...")[0] == 2
