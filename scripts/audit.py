"""`make security`'s dependency audit: pip-audit over this virtual environment, and its verdict in one line.

pip-audit itself decides whether the audit could run. Its vulnerability service is unreachable when
pip-audit fails with a connection error, or when it answers "not found" for every installed package
(what a package mirror without the JSON API gives): both are reported as
``dependency audit skipped: offline`` and exit 0. Known vulnerabilities, or some packages that could not
be audited while others could, exit 1 with pip-audit's findings.
"""

from __future__ import annotations

import json
import shutil
import subprocess  # nosec B404 - runs pip-audit, a fixed command
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

SKIPPED_OFFLINE = "dependency audit skipped: offline"
#: Fragments of pip-audit's error output when it cannot reach its service.
OFFLINE_SIGNS = ("ConnectionError", "Connection refused", "Max retries exceeded", "Name or service not known",
                 "Temporary failure in name resolution", "Network is unreachable", "timed out",
                 "No route to host", "ProxyError", "SSLError")
NOT_FOUND = "not found"
EDITABLE = "editable"


def verdict(returncode: int, stdout: str, stderr: str) -> Tuple[int, str]:
    """The exit code and the message for a ``pip-audit --format json`` run that ended like this."""
    report = _parse(stdout)
    if report is None:
        if any(sign in stderr for sign in OFFLINE_SIGNS):
            return 0, SKIPPED_OFFLINE
        return (returncode or 1), f"dependency audit failed (pip-audit exit {returncode}):\n{stderr.strip()}"
    dependencies: List[Dict[str, Any]] = [  # this project's own editable install is not audited on purpose
        d for d in report.get("dependencies", [])
        if isinstance(d, dict) and EDITABLE not in str(d.get("skip_reason", "")).lower()]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    if vulnerable:
        lines = [f"  {d.get('name')} {d.get('version')}: " + ", ".join(str(v.get("id")) for v in d["vulns"])
                 for d in vulnerable]
        return 1, "known vulnerabilities:\n" + "\n".join(lines)
    if dependencies and len(skipped) == len(dependencies) and all(
            NOT_FOUND in str(d["skip_reason"]).lower() for d in skipped):
        return 0, SKIPPED_OFFLINE
    if skipped:
        lines = [f"  {d.get('name')}: {d.get('skip_reason')}" for d in skipped]
        return 1, "some dependencies could not be audited:\n" + "\n".join(lines)
    return 0, f"dependency audit: no known vulnerabilities in {len(dependencies)} packages"


def _parse(stdout: str) -> Optional[Dict[str, Any]]:
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def main() -> int:
    """Run pip-audit next to this interpreter and print the verdict."""
    pip_audit = Path(sys.executable).with_name("pip-audit")
    command = str(pip_audit) if pip_audit.exists() else shutil.which("pip-audit")
    if command is None:
        print("dependency audit skipped: pip-audit is not installed")
        return 0
    done = subprocess.run([command, "--skip-editable", "--progress-spinner", "off", "--format", "json"],  # nosec B603
                          capture_output=True, text=True, check=False)
    code, message = verdict(done.returncode, done.stdout, done.stderr)
    print(message)
    return code


if __name__ == "__main__":
    sys.exit(main())
