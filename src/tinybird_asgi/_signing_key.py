"""What a Tinybird workspace admin token reveals about its workspace.

Tinybird's static tokens look like ``p.<base64url JSON>.<signature>``. In a
workspace token, the JSON's ``u`` field is the workspace id and ``host`` a
region slug. Tinybird does not document this layout, but its own templates
rely on it; explicit settings always win over what is read here.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["DEFAULT_API_URL", "REGION_API_URLS", "read_token_payload"]

DEFAULT_API_URL = "https://api.tinybird.co"

# Region slugs found in workspace tokens, and each region's API host, from
# Tinybird's "Regions and endpoints" documentation.
REGION_API_URLS: dict[str, str] = {
    "gcp-europe-west3": "https://api.tinybird.co",
    "gcp-europe-west2": "https://api.europe-west2.gcp.tinybird.co",
    "gcp-us-east4": "https://api.us-east.tinybird.co",
    "gcp-northamerica-northeast2": "https://api.northamerica-northeast2.gcp.tinybird.co",
    "aws-eu-central-1": "https://api.eu-central-1.aws.tinybird.co",
    "aws-eu-west-1": "https://api.eu-west-1.aws.tinybird.co",
    "aws-us-east-1": "https://api.us-east.aws.tinybird.co",
    "aws-us-west-2": "https://api.us-west-2.aws.tinybird.co",
    "local": "http://localhost:7181",
}


def read_token_payload(token: str) -> dict[str, Any]:
    """Decode the JSON part of a ``p.<payload>.<signature>`` token.

    Returns an empty dict for any other shape, because a signing key need not
    be a Tinybird static token (a test key, for example).
    """
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "p":
        return {}
    encoded = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        payload = json.loads(base64.urlsafe_b64decode(encoded))
    except (binascii.Error, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}
