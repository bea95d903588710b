"""The core is a library: no module outside `segbill.cli` imports typer or rich, and the public
names of `segbill` resolve without loading the command line."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import segbill

CORE = sorted(
    module.name
    for module in pkgutil.walk_packages(segbill.__path__, "segbill.")
    if module.name != "segbill.__main__" and not module.name.startswith("segbill.cli")
)


def test_the_core_is_every_module_but_the_command_line() -> None:
    assert {"segbill.pipeline", "segbill.report", "segbill.inspection", "segbill.targets.lago_api"} <= set(CORE)
    assert "segbill.cli.summary" not in CORE


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_neither_typer_nor_rich(module: str) -> None:
    code = f"import {module}, sys; loaded = {{'typer', 'rich'}} & set(sys.modules); assert not loaded, loaded"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_public_names_resolve_without_the_command_line() -> None:
    code = (
        "import segbill, sys; assert not {'segbill.pipeline', 'orjson', 'httpx'} & set(sys.modules); "
        "[getattr(segbill, name) for name in segbill.__all__]; "
        "loaded = {'typer', 'rich', 'segbill.cli'} & set(sys.modules); assert not loaded, loaded; "
        "assert segbill.load_mapping is sys.modules['segbill.mapping_file'].load"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_delivery_knows_nothing_of_the_run_loop_the_summary_nor_progress() -> None:
    """The HTTP sink speaks only the sink interface: loading it loads no reading, ledger,
    summary, progress or command line."""
    code = (
        "import segbill.delivery, sys; "
        "loaded = {'segbill.pipeline', 'segbill.runner', 'segbill.report', 'segbill.state', 'segbill.cli'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_a_dry_run_runs_the_loop_without_an_event_loop(tmp_path) -> None:
    """A sink that never waits needs no asyncio (and the ssl it loads: 6 MB of a dry run)."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"type": "track", "event": "x", "userId": "u", "messageId": "m", "timestamp": "2024-01-01T00:00:00Z"}\n')
    code = (
        "import io, sys; from segbill import Options, PrintSink, Replay, expand, get_target, run; "
        f"replay = Replay(Options(expand([{str(path)!r}], stdin_is_terminal=True), get_target('lago'), dead_letter=None, dry_run=True)); "
        "out = io.BytesIO(); run(replay, PrintSink(out)); replay.close(); "
        "assert replay.tally.delivered == 1 and out.getvalue().count(b'\\n') == 1, (replay.tally, out.getvalue()); "
        "assert 'asyncio' not in sys.modules"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
