"""Every chapter's first cell: a reader without the package gets a sentence, not a traceback."""

import json
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))


def first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_explains_a_missing_package(path, monkeypatch):
    # None in sys.modules makes `import quantbook` raise ModuleNotFoundError, as on a machine
    # where the chapter was downloaded alone; Jupyter shows a SystemExit as its message only
    for name in [m for m in sys.modules if m == "quantbook" or m.startswith("quantbook.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "quantbook", None)
    with pytest.raises(SystemExit) as stopped:
        exec(compile(first_code_cell(path), str(path), "exec"), {})
    message = str(stopped.value)
    assert message.startswith("This chapter needs quantbook, the book's helper package")
    assert "make lab" in message and stopped.value.__suppress_context__
