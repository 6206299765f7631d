"""Print the chapters, longest stored run first: the order `make nbval` hands them to its workers.

pytest-xdist's `--dist loadfile` gives each worker the next notebook as soon as it is free, in
the order they are collected; starting with the longest keeps the two workers busy until
the end (longest-first scheduling) instead of leaving one chapter running alone. The run times
are the ones each notebook stored when it was last executed (nbclient's cell timestamps).

Usage: python scripts/nbval_order.py [FOLDER]   (default notebooks)
"""

import datetime
import json
import pathlib
import sys


def stored_seconds(path: pathlib.Path) -> float:
    """Seconds the notebook's cells took when it was last executed (0 if it stores none)."""
    total = 0.0
    for cell in json.loads(path.read_text())["cells"]:
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            total += (datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
                      - datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
                      ).total_seconds()
    return total


def main(argv: list[str]) -> int:
    folder = pathlib.Path(argv[0] if argv else "notebooks")
    paths = sorted(folder.glob("[0-9]*.ipynb"))
    if not paths:
        print(f"no notebooks in {folder}: pass the folder that holds them", file=sys.stderr)
        return 2
    print(" ".join(str(p) for p in sorted(paths, key=stored_seconds, reverse=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
