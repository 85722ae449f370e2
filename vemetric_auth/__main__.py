"""The ``vemetric-auth`` command line, also run as ``python -m vemetric_auth``."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line; without its extra installed, say so in one line."""
    try:
        from .cli import main as run
    except ModuleNotFoundError as error:
        if error.name not in ("click", "sqlalchemy"):
            raise
        sys.exit(
            f"vemetric-auth: the command line needs {error.name}: "
            "pip install 'vemetric-auth[cli]'"
        )
    run()


if __name__ == "__main__":
    main()
