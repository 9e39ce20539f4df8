"""A real `tvs serve` on loopback (binary from TVS_BIN) and tenants made through its admin API."""

import os
import subprocess
import tempfile

import httpx
import pytest

ADMIN = "python-client-admin-key"


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def tenant(self, tenant_id: str, **shape) -> str:
        """Creates a tenant and returns its API key."""
        body = {"id": tenant_id, **shape}
        response = httpx.post(f"{self.url}/v1/tenants", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
        assert response.status_code == 201, response.text
        return response.json()["api_key"]


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("TVS_BIN")
    if not binary:
        pytest.fail("set TVS_BIN to a tvs binary (cargo test sets it)")
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, TVS_DATA_DIR=data, TVS_ADMIN_KEY=ADMIN)
        process = subprocess.Popen(
            [binary, "serve", "--addr", "127.0.0.1:0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            line = process.stdout.readline().strip()
            assert line.startswith("listening on http://"), line
            yield Server(line.removeprefix("listening on "))
        finally:
            process.terminate()
            process.wait(timeout=30)
