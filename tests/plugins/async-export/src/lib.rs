//! A `function` plugin whose `handle` is lifted with the component model's async ABI, which
//! this host does not run: its upload must be refused, saying why.

wit_bindgen::generate!({
    path: "../../../wit/plugin",
    world: "tvs:plugin/function",
    async: ["export:handle"],
    generate_all,
});

struct AsyncExport;

impl Guest for AsyncExport {
    async fn handle(request: String) -> Result<String, String> {
        Ok(request)
    }
}

export!(AsyncExport);
