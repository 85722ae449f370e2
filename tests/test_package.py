"""What SPEC section 3 promises of the package itself."""

from __future__ import annotations

import subprocess
import sys

import vemetric_auth

SPEC_NAMES = {
    "generate_key",
    "is_valid_format",
    "ApiKey",
    "IssuedKey",
    "KeyStore",
    "InMemoryKeyStore",
    "SQLKeyStore",
    "KeyManager",
    "ApiKeyMiddleware",
    "AuthError",
    "MissingApiKey",
    "MalformedAuthorizationHeader",
    "InvalidApiKeyFormat",
    "InvalidApiKey",
    "StoreUnavailable",
    "KeyNotFound",
}


def test_the_root_exports_every_name_of_the_spec() -> None:
    assert set(vemetric_auth.__all__) >= SPEC_NAMES
    for name in vemetric_auth.__all__:
        assert getattr(vemetric_auth, name) is not None
    assert "VemetricAuth" not in vemetric_auth.__all__


def test_importing_the_package_loads_no_framework_or_extra() -> None:
    code = (
        "import sys, vemetric_auth\n"
        "loaded = {'flask', 'sqlalchemy', 'click', 'psycopg'} & set(sys.modules)\n"
        "print(sorted(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "[]\n"


def test_the_command_line_loads_no_store_until_a_command_runs() -> None:
    code = (
        "import sys, vemetric_auth.cli\n"
        "loaded = {'flask', 'sqlalchemy', 'psycopg'} & set(sys.modules)\n"
        "print(sorted(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "[]\n"
