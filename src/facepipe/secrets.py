"""Keep credentials out of params, tags, logs and pipeline specs."""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

# Environment variables that hold secrets; their values must never be written anywhere.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
    "OBS_SECRET_ACCESS_KEY", "OBS_ACCESS_KEY_ID", "OBS_SECURITY_TOKEN",
    "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_AK", "SWR_PASSWORD", "REGISTRY_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
)
_SECRET_WORDS = ("secret", "password", "token", "access_key", "accesskey", "credential")


def secret_values() -> list[str]:
    return [v for k in SECRET_ENV_VARS if (v := os.environ.get(k)) and len(v) >= 4]


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in _SECRET_WORDS)


_URL_PASSWORD = re.compile(r"(\w+://[^/@\s:]*):[^/@\s]*@")  # scheme://user:PASSWORD@host


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, "***")
    return _URL_PASSWORD.sub(r"\1:***@", text)


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if is_secret_key(k):
            out[k] = "***"
        elif isinstance(v, str):
            out[k] = redact(v)
        else:
            out[k] = v
    return out
