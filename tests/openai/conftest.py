"""A real `tvs serve` on loopback (binary from TVS_BIN) with one tenant on the local model."""

import os
import pathlib
import subprocess
import tempfile

import httpx
import pytest
import tiktoken.load

ADMIN = "openai-clients-admin-key"

# Nothing is downloaded here, but LangChain's default path asks tiktoken for the cl100k_base
# table, which tiktoken downloads on first use. Only that download is replaced, by the same
# file (tiktoken checks its sha256 before using it), taken from the crate tvs decodes with.
_download = tiktoken.load.read_file


def _read_file(blobpath: str) -> bytes:
    if blobpath.endswith("/cl100k_base.tiktoken"):
        return pathlib.Path(os.environ["TVS_CL100K_FILE"]).read_bytes()
    return _download(blobpath)


tiktoken.load.read_file = _read_file


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("TVS_BIN")
    if not binary:
        pytest.fail("set TVS_BIN to a tvs binary (cargo test sets it)")
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, TVS_DATA_DIR=data, TVS_ADMIN_KEY=ADMIN)
        env.pop("EMBEDDING_MODEL", None)
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
            yield line.removeprefix("listening on ")
        finally:
            process.terminate()
            process.wait(timeout=30)


def create_tenant(url: str, tenant_id: str, **shape) -> str:
    """Creates a tenant and returns its API key."""
    response = httpx.post(
        f"{url}/v1/tenants",
        json={"id": tenant_id, **shape},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 201, response.text
    return response.json()["api_key"]


@pytest.fixture(scope="session")
def tenant_key(server) -> str:
    """The key of a tenant created as a new user would: no model named, so the default one."""
    return create_tenant(server, "kb")
