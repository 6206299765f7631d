"""Re-execute every notebook in place with nbclient, storing widget state.

Usage: python scripts/run_notebooks.py [notebooks/NAME.ipynb ...]
Run it after changing code that notebooks use; `make test` then checks the stored outputs.
"""

import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(path: pathlib.Path) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,  # the static site renders widgets from this state
    )
    start = time.perf_counter()
    client.execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    from quantbook.machine import REPRODUCIBLE

    os.environ.update(REPRODUCIBLE)  # the kernels nbval will compare under (see the Makefile)
    paths = [pathlib.Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    for path in paths:
        seconds = run(path)
        print(f"{path.name}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
