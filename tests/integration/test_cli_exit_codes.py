"""``mqtt-listener run`` never exits 0 after a failure: a processor module calling ``sys.exit()`` on import,
and a ``run()`` that ended by an error (even ``SystemExit``), exit non-zero with one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from Listener import EventListener
from Listener.cli import command as cli


pytestmark = pytest.mark.usefixtures("root_logger")  # main() installs a root log handler


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def processors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit()\n", encoding="utf-8")
    (tmp_path / "exits_0_on_import.py").write_text("raise SystemExit(0)\n", encoding="utf-8")
    (tmp_path / "fine_processor.py").write_text("def process(data, job_id):\n    return None\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("exits_on_import", "exits_0_on_import", "fine_processor"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("module", ["exits_on_import", "exits_0_on_import"])
def test_a_processor_module_calling_sys_exit_on_import_exits_2_with_a_message(processors: Path, module: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(processors), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command: List[str] = [sys.executable, "-m", "Listener", "run", f"{module}:process", "--set", "host=127.0.0.1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)  # noqa: S603
    assert done.returncode == 2, done.stderr
    assert f"mqtt-listener: importing processor module '{module}' failed: it called sys.exit(" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("error", [RuntimeError("a bug"), SystemExit(0), ValueError("")],
                         ids=["RuntimeError", "SystemExit", "ValueError"])
def test_run_ended_by_an_exception_exits_1(processors: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], error: BaseException) -> None:
    async def failing_run(self: EventListener, *args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(EventListener, "run", failing_run)
    code = cli.main(["run", "fine_processor:process", "--set", "host=127.0.0.1", "--log-level", "ERROR"])
    assert code == 1
    err = capsys.readouterr().err
    assert "mqtt-listener: the listener stopped on" in err and type(error).__name__ in err
    assert "Traceback" not in err
