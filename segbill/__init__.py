"""segbill: replay Segment event exports into usage-based billing platforms."""

import sys

__version__ = "0.1.0"


def main() -> None:
    """Console entry point. `--version` answers before the CLI (Typer, httpx, rich) is imported."""
    if sys.argv[1:] == ["--version"]:
        print(f"segbill {__version__}")
        return
    from segbill.cli import main as cli_main

    cli_main()
