"""Install the pinned environment (constraints.txt, plus any pin only requirements.txt has) into
the running interpreter's environment, with every core.

constraints.txt pins every package the book runs with, transitive ones included, so it is a lock
file: nothing is left to resolve. One `pip install -r requirements.txt -c constraints.txt`
unpacks and byte-compiles about 190 wheels on one core (170 s on the 2-core machines the book is
tested on, most of a fresh `make test`'s set-up). Here torch comes from pip (`torch==2.13.0`
takes the CPU build where pip is configured for it, see the README), while uv (pinned in UV,
installed into the environment first) installs the other pins in parallel with it, both with
`--no-deps` and byte-compiled (55 s there in all). Where uv cannot be installed or fails (no
access to PyPI's files, say), pip installs them instead, in parallel batches (105 s there).
`pip check` then confirms that every installed package has what it requires. Byte-compiling at
install time keeps the packages' own warnings hidden, and imports from recompiling on machines
that set PYTHONDONTWRITEBYTECODE.

Usage: python scripts/install_pinned.py [--jobs N] [--no-uv]   (run by `make setup` with .venv's
python)
"""

import argparse
import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
BATCH = 12  # pins per pip call: small enough to keep every core busy to the end
UV = "uv==0.13.9"


def pins(path: pathlib.Path) -> dict[str, str]:
    """``name -> version`` of a requirements file's ``name==version`` lines (names normalised)."""
    found = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if match is None:
            raise SystemExit(f"{path.name}:{number}: {line!r} is not an exact pin: write "
                             "name==version (every package is pinned, see the file's header)")
        found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def locked(root: pathlib.Path = ROOT) -> list[str]:
    """Every pin to install; a requirement whose version differs from its constraint is refused."""
    required, constrained = pins(root / "requirements.txt"), pins(root / "constraints.txt")
    clashes = [f"{name}=={v} (constraints.txt: {constrained[name]})"
               for name, v in required.items() if constrained.get(name, v) != v]
    if clashes:
        raise SystemExit("requirements.txt and constraints.txt disagree on " + ", ".join(clashes)
                         + ": change both to the same version")
    return [f"{name}=={v}" for name, v in sorted({**constrained, **required}.items())]


def install(batch: list[str]) -> tuple[list[str], int, str]:
    """``pip install --no-deps`` of ``batch``: ``(batch, exit code, what pip wrote)``."""
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--disable-pip-version-check", *batch],
                         capture_output=True, text=True)
    return batch, run.returncode, run.stdout + run.stderr


def install_with_uv(pins_: list[str]) -> str | None:
    """Install ``pins_`` with uv; None when done, else why not (pip then takes over)."""
    _, code, output = install([UV])
    if code:
        return f"pip could not install {UV}: {output.strip()[-300:]}"
    uv = pathlib.Path(sys.executable).parent / "uv"
    run = subprocess.run([str(uv), "pip", "install", "--python", sys.executable, "--quiet",
                          "--no-deps", "--compile-bytecode", *pins_],
                         capture_output=True, text=True)
    return f"uv failed: {(run.stdout + run.stderr).strip()[-300:]}" if run.returncode else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="pip processes at once (default: the number of cores)")
    parser.add_argument("--no-uv", action="store_true", help="install everything with pip")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs}: expected at least 1")
    todo = locked()
    torch = [p for p in todo if p.startswith("torch==")]  # the largest wheel by far: pip's
    rest = [p for p in todo if p not in torch]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(install, torch)] if torch else []
        why = "--no-uv" if args.no_uv else install_with_uv(rest)
        if why:
            print(f"install_pinned.py: installing with pip only ({why})", file=sys.stderr)
            n = len(rest) // BATCH + 1
            jobs += [pool.submit(install, rest[i::n]) for i in range(n)]
        failed = []
        for job in jobs:
            batch, code, output = job.result()
            if code:
                failed.append(batch)
                print(output, file=sys.stderr)
    if failed:
        print(f"install_pinned.py: pip failed on {failed}: see its messages above",
              file=sys.stderr)
        return 1
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode:
        print(f"install_pinned.py: the installed set is inconsistent ({check.stdout.strip()}): "
              "pin the missing or clashing package in constraints.txt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
