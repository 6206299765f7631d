"""scripts/nbval_order.py: the chapters, longest stored run first."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "nbval_order.py"


def notebook(path: Path, seconds: list[float]) -> None:
    cells = [{"cell_type": "code", "metadata": {"execution": {
        "iopub.execute_input": "2026-12-03T10:00:00.000000Z",
        "shell.execute_reply": f"2026-12-03T10:00:{s:09.6f}Z"}}, "source": "", "outputs": []}
        for s in seconds]
    path.write_text(json.dumps({"cells": cells + [{"cell_type": "markdown", "metadata": {},
                                                    "source": "text"}]}))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_longest_first(tmp_path):
    notebook(tmp_path / "01_short.ipynb", [1.5, 2.0])
    notebook(tmp_path / "02_long.ipynb", [30.0])
    notebook(tmp_path / "03_untimed.ipynb", [])
    (tmp_path / "README.ipynb").write_text("{}")  # not a chapter: no leading digit
    done = run(str(tmp_path))
    assert done.returncode == 0
    assert [Path(p).name for p in done.stdout.split()] == [
        "02_long.ipynb", "01_short.ipynb", "03_untimed.ipynb"]


def test_empty_folder_is_refused(tmp_path):
    done = run(str(tmp_path))
    assert done.returncode == 2 and "no notebooks in" in done.stderr
    assert done.stdout == ""
