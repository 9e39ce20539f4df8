"""`TvsPlugins` against a real server, with the probe plugin the Rust tests build
(TVS_PROBE_PLUGIN: its path)."""

import os

import pytest

from langchain_tvs import TvsError, TvsPlugins


def test_a_tenant_uploads_calls_rolls_back_and_deletes_a_plugin(server):
    probe = os.environ.get("TVS_PROBE_PLUGIN")
    if not probe:
        pytest.fail("set TVS_PROBE_PLUGIN to the probe plugin (cargo test sets it)")
    plugins = TvsPlugins(url=server.url, api_key=server.tenant("plugin-owner", dims=4, embedding_model="none"))
    first = plugins.upload("probe", probe)
    assert (first["version"], first["kind"]) == (1, "function")
    assert plugins.call("probe", {"op": "count"}) == {"count": 0}
    with pytest.raises(TvsError) as refused:
        plugins.call("probe", {"op": "fail"})
    assert (refused.value.status, refused.value.code) == (422, "plugin_error")
    run = plugins.test("probe", {"op": "log"})
    assert run["ok"] and any(line["message"] == "hello from the probe" for line in run["log"])
    assert plugins.upload("probe", probe)["version"] == 2
    assert plugins.activate("probe", 1)["active"] == 1
    assert [p["name"] for p in plugins.list()] == ["probe"]
    plugins.delete("probe")
    with pytest.raises(TvsError) as gone:
        plugins.get("probe")
    assert gone.value.status == 404
