"""Package metadata, public names and shipped files."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import jwt
import pytest

import tinybird_asgi
import tinybird_flask
from tests.conftest import SIGNING_KEY, WORKSPACE_ID


def test_version_from_metadata() -> None:
    assert tinybird_asgi.__version__ == importlib.metadata.version("tinybird-asgi")


def test_flask_package_imports() -> None:
    assert tinybird_flask.__version__ == tinybird_asgi.__version__


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(tinybird_asgi).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert set(tinybird_asgi.__all__) == public | {"__version__"}


def test_all_has_no_duplicates() -> None:
    assert len(tinybird_asgi.__all__) == len(set(tinybird_asgi.__all__))


def test_all_names_resolve() -> None:
    for name in tinybird_asgi.__all__:
        assert hasattr(tinybird_asgi, name), name


def test_py_typed_shipped() -> None:
    for package in ("tinybird_asgi", "tinybird_flask"):
        assert importlib.resources.files(package).joinpath("py.typed").is_file()


def test_runtime_dependencies() -> None:
    requires = importlib.metadata.requires("tinybird-asgi") or []
    runtime = sorted(
        req.split(">")[0].lower() for req in requires if "extra ==" not in req
    )

    assert runtime == ["cachetools", "pyjwt"]


def test_errors_share_root() -> None:
    errors = [
        tinybird_asgi.ConfigurationError,
        tinybird_asgi.InvalidScopeError,
        tinybird_asgi.PolicyError,
        tinybird_asgi.IdentityError,
        tinybird_asgi.AnonymousPrincipalError,
        tinybird_asgi.SigningError,
    ]

    for error in errors:
        assert issubclass(error, tinybird_asgi.TinybirdError), error.__name__


def test_readme_quickstart_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("TINYBIRD_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("TINYBIRD_WORKSPACE_ID", WORKSPACE_ID)
    monkeypatch.delenv("TINYBIRD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TINYBIRD_API_URL", raising=False)
    # dataclass() looks the module up in sys.modules, so borrow this one.
    namespace: dict[str, Any] = {"__name__": __name__}

    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102

    claims = jwt.decode(namespace["token"].value, SIGNING_KEY, algorithms=["HS256"])
    assert claims["scopes"] == [
        {
            "type": "PIPES:READ",
            "resource": "sales_by_day",
            "fixed_params": {"org_id": "acme"},
        }
    ]
    assert claims["limits"] == {"rps": 20}


def test_import_loads_no_framework() -> None:
    # A fresh interpreter, because this test session has imported them all.
    code = (
        "import sys, tinybird_asgi; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'starlette', 'fastapi', 'flask', 'werkzeug', 'flask_login'}))"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
