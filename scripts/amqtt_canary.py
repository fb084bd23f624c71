"""The amqtt canary: does the listener still work with amqtt's newest release? (``make amqtt-canary``)

The listener pins ``amqtt==<version>`` because it relies on amqtt's insides (see Listener/mqtt/amqtt_boundary.py).
This script makes a scratch virtual environment in a temporary folder, installs the project with its dev
dependencies, then the newest amqtt over the pinned one, and there:

1. says which amqtt it got and which one is pinned;
2. lists what changed of the contract (``CONTRACT`` in the boundary): names missing, signatures changed;
3. runs the contract test, then the broker-free suite (``pytest -m "unit or integration"``).

Exits 0 when the contract holds and both test runs pass, 1 otherwise (2 when the environment could not be
made). ``--amqtt 'amqtt==0.13.0'`` tries a given release instead; ``--keep`` leaves the environment behind.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess  # nosec B404 - runs pip and pytest in the scratch environment
import sys
import tempfile
import venv
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]

#: Run in the scratch environment: the contract's problems, one per line (nothing when it holds).
REPORT = """
import sys
try:
    from Listener.mqtt.amqtt_boundary import contract_problems
except ImportError as exc:  # the boundary refuses to load: AmqttIncompatible lists what changed
    problems = getattr(exc, "problems", None)
    if problems is None:
        raise
    print("\\n".join(problems))
    sys.exit(1)
problems = contract_problems()
print("\\n".join(problems))
sys.exit(1 if problems else 0)
"""


def pinned_version() -> str:
    """The amqtt version pyproject.toml pins (``amqtt==X``)."""
    found = re.search(r'"amqtt==([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    if found is None:
        raise SystemExit("pyproject.toml pins no amqtt version (amqtt==X)")
    return found.group(1)


def run(command: List[str]) -> int:
    """Run ``command`` in the project's folder, its output shown; its exit code."""
    print("$", shlex.join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, check=False).returncode  # nosec B603


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqtt", default="amqtt", help="the requirement to install (default: the newest amqtt)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch environment (its path is printed)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="amqtt-canary-"))
    try:
        print(f"Scratch environment: {folder}", flush=True)
        venv.create(folder, with_pip=True)
        python = str(folder / ("Scripts" if os.name == "nt" else "bin") / "python")
        # As `make install` does: compat puts a path entry in site-packages, so that mypy finds Listener too.
        if run([python, *PIP, "install", "-e", ".[dev]", "--config-settings", "editable_mode=compat"]) != 0:
            print("!! could not install the project and its dev dependencies")
            return 2
        # The project pins amqtt; installing it on its own replaces the pinned one (pip warns of the pin).
        if run([python, *PIP, "install", "--upgrade", args.amqtt]) != 0:
            print(f"!! could not install {args.amqtt}")
            return 2
        version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('amqtt'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()  # nosec B603
        pinned = pinned_version()
        same = "the pinned release itself" if version == pinned else "a different release"
        print(f"\namqtt installed: {version}; pinned in pyproject.toml: {pinned} ({same})\n", flush=True)

        report = subprocess.run([python, "-c", REPORT], cwd=ROOT, capture_output=True, text=True, check=False)  # nosec B603
        changes = [line for line in report.stdout.splitlines() if line.strip()]
        if report.returncode not in (0, 1) or (report.returncode == 1 and not changes):
            print(f"!! the contract could not be checked:\n{report.stderr.strip()}")
            changes = changes or ["(the contract could not be checked: see above)"]
        elif changes:
            print(f"What changed in amqtt {version} of what the listener relies on ({len(changes)}):")
            print("\n".join(f"  - {change}" for change in changes))
        else:
            print(f"Contract: amqtt {version} has every name the listener relies on, with the same signatures.")

        pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        contract = run([*pytest, "tests/unit/test_amqtt_contract.py"])
        suite = run([*pytest, "-m", "unit or integration"])
        ok = not changes and contract == 0 and suite == 0
        print(f"\namqtt {version} (pinned {pinned}): contract {'holds' if not changes else 'BROKEN'}, "
              f"contract test {'passed' if contract == 0 else 'FAILED'}, "
              f"broker-free suite {'passed' if suite == 0 else 'FAILED'}")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"Kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
