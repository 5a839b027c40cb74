"""Quick-start runner: `python3 tasks.py demo` and `python3 tasks.py test`.

Needs only Python >= 3.11 and pip. It creates `.venv/` beside this file on first use,
installs the project (editable, with the `test` extra) into it, re-installs when
`pyproject.toml` changes, and then runs the command inside that environment.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".installed-pyproject-sha256"

COMMANDS = {
    # The main job: QAGAN trained on the built-in demo set (workdirs/qagan_demo). Running it
    # again resumes from the latest checkpoint, or prints the evaluation when it is done.
    "demo": ["-m", "experiments.qagan_fivek"],
    # The CI suite: everything not marked slow, on both cores.
    "test": ["-m", "pytest", "-q", "-m", "not slow", "-n", "2"],
}


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _ensure_env() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and _python().exists():
        return
    if not _python().exists():
        print(f"Creating virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing the project and its dependencies (first run only) ...", flush=True)
    pip = [str(_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(digest)


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in COMMANDS:
        print(f"usage: python3 tasks.py {{{'|'.join(COMMANDS)}}} [extra args]", file=sys.stderr)
        return 2
    _ensure_env()
    cmd = [str(_python()), *COMMANDS[argv[0]], *argv[1:]]
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
