"""The README's set-up works as written: in any new shell, leaving nothing behind in the clone,
and .ci/run runs exactly it; its Kubernetes example installs something that exists."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, SAMPLE_DATA

README = (ROOT / "README.md").read_text(encoding="utf-8")


def block_after(heading: str, language: str) -> str:
    """The first fenced block of `language` after `heading`."""
    found = re.search(rf"{re.escape(heading)}.*?```{language}\n(.*?)```", README, re.DOTALL)
    assert found, f"no {language} block after {heading!r}"
    return found.group(1)


SETUP = block_after("## Set up and try it", "sh").splitlines()


def commands(line: str) -> list[str]:
    return [part.strip() for part in line.split("&&")]


def test_every_set_up_command_works_in_a_new_shell() -> None:
    """Nothing relies on an activation done in an earlier line: a reader comes back tomorrow."""
    for line in SETUP:
        activated = False
        for command in commands(line):
            if command == ". .venv/bin/activate":
                activated = True
            elif not command.startswith("python3 -m venv .venv"):
                assert activated or command.startswith(".venv/bin/"), f"{command!r} needs the venv activated in this shell"


def test_the_main_job_leaves_no_file_in_the_clone(tmp_path: Path) -> None:
    [job] = [command for line in SETUP for command in commands(line) if "segbill send sample_data/" in command]
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "segbill").exists():
        pytest.skip("segbill is not installed in this interpreter's environment")
    clone = tmp_path / "clone"
    shutil.copytree(SAMPLE_DATA, clone / "sample_data")
    (clone / ".venv").symlink_to(sys.prefix)

    def files() -> list[Path]:  # what the clone holds, apart from the environment
        return sorted(path for path in clone.rglob("*") if path.relative_to(clone).parts[0] != ".venv")

    before = files()
    env = {**os.environ, "PATH": f"{clone / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", job], cwd=clone, env=env, capture_output=True, check=False, timeout=120)
    assert done.returncode == 1, done.stderr  # the sample's bad lines, on purpose
    assert b'"code":' in done.stdout and b"dead-lettered" in done.stderr
    assert files() == before


def test_the_fake_platform_block_runs_as_written_and_stops_its_fake(tmp_path: Path) -> None:
    """The block starts the fake as a background job, which Ctrl-C never reaches: run as
    written (on a free port), it sends to the fake, stops it, and the fake says what it stored."""
    block = block_after("Try a real send without an account", "sh")
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "segbill").exists():
        pytest.skip("segbill is not installed in this interpreter's environment")
    shutil.copytree(SAMPLE_DATA, tmp_path / "sample_data")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    shell = subprocess.Popen(
        ["bash", "-c", block.replace("8080", str(port))],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:  # the fake holds the output open until it stops: a block that never stops it ends in the timeout
        out, err = shell.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)  # whatever the block left running
    assert re.search(r"stored [1-9]\d* Lago and 0 Hyperline events", out), out + err
    assert "delivered" in err


def test_ci_runs_exactly_the_readme_set_up() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for line in SETUP:
        assert any(ci_line == line or ci_line.startswith(line + " ") for ci_line in ci), f".ci/run does not run {line!r}"


def test_the_kubernetes_example_installs_segbill_from_a_repository_not_pypi() -> None:
    """segbill is not published: `pip install segbill` would fail (or install someone else's)."""
    job = block_after("A Kubernetes Indexed Job", "yaml")
    [install] = re.findall(r"pip install (?:--\S+ )*(\S+)", job)
    assert install.startswith(("https://", "git+https://")), install
