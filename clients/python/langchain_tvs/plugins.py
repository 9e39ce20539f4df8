"""`TvsPlugins`: a tenant's plugins over tvs's HTTP API (see docs/plugins.md).

Like the vector store, one object is one tenant: the tenant comes from the API key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from langchain_tvs.vectorstores import _base_url, _raise_for


class TvsPlugins:
    """Upload, inspect, roll back, enable, test, call and delete the plugins of one tenant."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 120.0) -> None:
        url = _base_url(url)
        api_key = api_key or os.environ.get("TVS_API_KEY")
        if not api_key:
            raise ValueError("a tenant API key is needed: pass api_key= or set TVS_API_KEY")
        self._client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def _path(self, name: str, suffix: str = "") -> str:
        return f"/v1/plugins/{quote(name, safe='')}{suffix}"

    def upload(self, name: str, component: bytes | str | Path) -> dict[str, Any]:
        """Stores `component` (bytes or a .wasm path) as the next version of `name` and makes it
        active; returns its version, kind, sha256, imports and exports."""
        if not isinstance(component, bytes):
            component = Path(component).read_bytes()
        response = self._client.put(
            self._path(name), content=component, headers={"Content-Type": "application/wasm"}
        )
        return _raise_for(response)

    def list(self) -> list[dict[str, Any]]:
        return _raise_for(self._client.get("/v1/plugins"))["plugins"]

    def get(self, name: str) -> dict[str, Any]:
        return _raise_for(self._client.get(self._path(name)))

    def activate(self, name: str, version: int) -> dict[str, Any]:
        """Makes a kept version active: a roll back (or forward)."""
        return _raise_for(self._client.post(self._path(name, "/active"), json={"version": version}))

    def enable(self, name: str) -> dict[str, Any]:
        """Makes every ingest of the tenant go through the ingest transform `name`."""
        return _raise_for(self._client.post(self._path(name, "/enable")))

    def disable(self, name: str) -> dict[str, Any]:
        return _raise_for(self._client.post(self._path(name, "/disable")))

    def delete(self, name: str) -> None:
        _raise_for(self._client.delete(self._path(name)))

    def test(self, name: str, input: Any) -> dict[str, Any]:
        """One run on `input`: output (or error), log lines, time and peak memory."""
        return _raise_for(self._client.post(self._path(name, "/test"), json={"input": input}))

    def call(self, name: str, request: Any) -> Any:
        """Calls the function plugin `name` with `request` (sent as JSON) and returns its answer,
        parsed as JSON when it is; a plugin's `err` raises `TvsError` with code plugin_error."""
        response = self._client.post(f"/v1/fn/{quote(name, safe='')}", content=json.dumps(request))
        if not response.is_success:
            _raise_for(response)
        try:
            return response.json()
        except ValueError:
            return response.text
