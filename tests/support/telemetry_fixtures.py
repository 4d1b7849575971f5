"""Fixtures of the telemetry tests: Apps with the access log in tmp_path and a metrics port."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import wait_for


@pytest.fixture
def access_log_path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "access.log"


@pytest.fixture
def telemetry_app(make_app, access_log_path: Path) -> Callable[..., Any]:
    """make_app with the access log in tmp_path, metrics on a free loopback port, spans on (no HTTP shim)."""

    def make(**overrides: Any) -> Any:
        settings = {
            "access_log_path": str(access_log_path),
            "http_server_address": "",
            "metrics_address": "127.0.0.1:0",
            "tracing_enabled": True,
            **overrides,
        }
        return make_app(**settings)

    return make


@pytest.fixture
def read_access_log(access_log_path: Path) -> Callable[..., list[dict[str, Any]]]:
    """Wait until the access log holds `count` lines (of `method`, if given) and return them parsed."""

    def read(count: int, method: str | None = None, timeout: float = 10) -> list[dict[str, Any]]:
        def lines() -> list[dict[str, Any]] | None:
            if not access_log_path.is_file():
                return None
            entries = [json.loads(line) for line in access_log_path.read_text().splitlines() if line]
            entries = [e for e in entries if method is None or e["method"] == method]
            return entries if len(entries) >= count else None

        return wait_for(lines, timeout, f"{count} access-log lines")

    return read
