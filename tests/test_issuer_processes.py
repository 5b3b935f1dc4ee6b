"""Separate processes sign byte-identical tokens without shared state."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt

from tests.conftest import SIGNING_KEY, START, WORKSPACE_ID
from tinybird_asgi import PipeRead, TokenIssuer

# Each child process builds its own issuer from the same configuration and a
# fixed clock value, then prints one token per requested user.
CHILD = """
import json, sys
from tinybird_asgi import PipeRead, TokenIssuer

config = json.loads(sys.argv[1])
issuer = TokenIssuer(
    signing_key=config["key"],
    workspace_id=config["workspace_id"],
    scopes=lambda user: [PipeRead("sales", fixed_params={"org_id": user + "-org"})],
    rate_limit=10,
    clock=lambda: config["now"],
)
print(json.dumps([issuer.token_for(user).value for user in config["users"]]))
"""

USERS = ["alice", "bob", "carol"]


def run_children(*clock_values: float) -> list[list[str]]:
    """Run one child per clock value, all at once, and return their tokens."""
    children = []
    for now in clock_values:
        config = {
            "key": SIGNING_KEY,
            "workspace_id": WORKSPACE_ID,
            "now": now,
            "users": USERS,
        }
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=60)
        assert child.returncode == 0, stderr
        results.append(json.loads(stdout))
    return results


def test_processes_same_step_identical() -> None:
    first, second = run_children(START + 10, START + 250.5)

    assert first == second


def test_processes_match_parent_issuer() -> None:
    (child_tokens,) = run_children(START + 42)
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=lambda user: [PipeRead("sales", fixed_params={"org_id": user + "-org"})],
        rate_limit=10,
        clock=lambda: START + 42,
    )

    assert [issuer.token_for(user).value for user in USERS] == child_tokens


def test_processes_tokens_valid() -> None:
    (tokens,) = run_children(START + 10)

    for user, value in zip(USERS, tokens, strict=True):
        claims = jwt.decode(value, SIGNING_KEY, algorithms=["HS256"])
        assert claims == {
            "workspace_id": WORKSPACE_ID,
            "name": user,
            "exp": int(START) + 3600,
            "scopes": [
                {
                    "type": "PIPES:READ",
                    "resource": "sales",
                    "fixed_params": {"org_id": f"{user}-org"},
                }
            ],
            "limits": {"rps": 10},
        }


def test_processes_users_differ() -> None:
    (tokens,) = run_children(START + 10)

    assert len(set(tokens)) == len(USERS)


def test_processes_next_step_differs() -> None:
    first, second = run_children(START + 299, START + 300)

    for before, after in zip(first, second, strict=True):
        assert before != after
    assert (
        jwt.decode(second[0], SIGNING_KEY, algorithms=["HS256"])["exp"]
        == int(START) + 3900
    )
