"""The ``vemetric-auth`` command line, also run as ``python -m vemetric_auth``."""

from __future__ import annotations

import sys

from ._extras import install_hint


def main() -> None:
    """Run the command line; without its extra installed, say so in one line."""
    try:
        from .cli import main as run
    except ModuleNotFoundError as error:
        if error.name != "click":
            raise
        sys.exit(f"Error: the vemetric-auth command needs click: {install_hint('cli')}")
    run()


if __name__ == "__main__":
    main()
