"""scripts/install_pinned.py: `make setup` installs exactly the lock file's pins."""

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_pinned.py"
spec = importlib.util.spec_from_file_location("install_pinned", SCRIPT)
install_pinned = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_pinned)


def write(root: Path, requirements: str, constraints: str) -> Path:
    (root / "requirements.txt").write_text(requirements)
    (root / "constraints.txt").write_text(constraints)
    return root


def test_lock_is_constraints_plus_requirements_only_pins(tmp_path):
    root = write(tmp_path, "# why\nTorch==2.13.0  # CPU build\nextra_pkg==1.0\n",
                 "# header\nnumpy==2.4.6\ntorch==2.13.0\n")
    assert install_pinned.locked(root) == ["extra-pkg==1.0", "numpy==2.4.6", "torch==2.13.0"]


@pytest.mark.parametrize("line", ["torch>=2.13", "torch", "-e ."])
def test_a_loose_line_is_refused_with_file_and_line(tmp_path, line):
    root = write(tmp_path, f"numpy==2.4.6\n{line}\n", "numpy==2.4.6\n")
    with pytest.raises(SystemExit, match=r"requirements.txt:2: .* is not an exact pin"):
        install_pinned.locked(root)


def test_requirement_and_constraint_disagreeing_is_refused(tmp_path):
    root = write(tmp_path, "torch==2.13.0\n", "torch==2.14.1\n")
    with pytest.raises(SystemExit, match=r"torch==2.13.0 \(constraints.txt: 2.14.1\)"):
        install_pinned.locked(root)


def test_this_environment_is_the_lock():
    """Every pin of the repository's lock is what is installed here (a stale lock fails)."""
    wrong = []
    for pin in install_pinned.locked():
        name, version = pin.split("==")
        installed = importlib.metadata.version(name).split("+")[0]  # torch: 2.13.0+cpu
        if installed != version:
            wrong.append(f"{pin} (installed: {installed})")
    assert not wrong
