"""segbill: replay Segment event exports into usage-based billing platforms.

The command line lives in `segbill.cli`; everything named in `__all__` is the library a Python
user calls, and none of it imports typer or rich. A replay in code:

    from segbill import Options, PrintSink, Replay, expand, get_target, load_mapping, run

    target = get_target("lago")
    sources = expand(["exports/"], stdin_is_terminal=True)
    replay = Replay(Options(sources, target, load_mapping("lago"), dry_run=True))
    asyncio.run(run(replay, PrintSink(sys.stdout.buffer)))   # or HttpSink(target, DeliveryOptions(...))
    replay.close()
    replay.tally.exit_code()             # an ExitCode, as `segbill send` exits

Names are imported on first use, so `segbill --version` (and `import segbill`) loads none of them.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing's own would import typing, which `segbill --version` does not need
if TYPE_CHECKING:
    from segbill.delivery import DeliveryOptions, HttpSink
    from segbill.inspection import inspect_sources
    from segbill.mapping import Mapping
    from segbill.mapping_file import ConfigError
    from segbill.mapping_file import load as load_mapping
    from segbill.pipeline import Options, Replay
    from segbill.report import ExitCode, Tally
    from segbill.runner import run
    from segbill.sink import PrintSink
    from segbill.sources import Source, expand
    from segbill.state import State
    from segbill.targets import Target, get_target

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeliveryOptions",
    "ExitCode",
    "HttpSink",
    "Mapping",
    "Options",
    "PrintSink",
    "Replay",
    "Source",
    "State",
    "Tally",
    "Target",
    "__version__",
    "expand",
    "get_target",
    "inspect_sources",
    "load_mapping",
    "main",
    "run",
]

# public name -> (module, name there)
_PUBLIC = {
    "ConfigError": ("segbill.mapping_file", "ConfigError"),
    "DeliveryOptions": ("segbill.delivery", "DeliveryOptions"),
    "ExitCode": ("segbill.report", "ExitCode"),
    "HttpSink": ("segbill.delivery", "HttpSink"),
    "Mapping": ("segbill.mapping", "Mapping"),
    "Options": ("segbill.pipeline", "Options"),
    "PrintSink": ("segbill.sink", "PrintSink"),
    "Replay": ("segbill.pipeline", "Replay"),
    "Source": ("segbill.sources", "Source"),
    "State": ("segbill.state", "State"),
    "Tally": ("segbill.report", "Tally"),
    "Target": ("segbill.targets", "Target"),
    "expand": ("segbill.sources", "expand"),
    "get_target": ("segbill.targets", "get_target"),
    "inspect_sources": ("segbill.inspection", "inspect_sources"),
    "load_mapping": ("segbill.mapping_file", "load"),
    "run": ("segbill.runner", "run"),
}


def __getattr__(name: str) -> object:
    """Imports a public name when it is first asked for (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'segbill' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def main() -> None:
    """Console entry point. `--version` answers before the CLI (Typer, httpx, rich) is imported."""
    if sys.argv[1:] == ["--version"]:
        print(f"segbill {__version__}")
        return
    from segbill.cli import main as cli_main

    cli_main()
