//! A `function` plugin whose linear memory starts at 100 MiB (`build.rs` sets the initial
//! memory), above the 64 MiB cap: its upload must be refused, saying so.

wit_bindgen::generate!({
    path: "../../../wit/plugin",
    world: "tvs:plugin/function",
    generate_all,
});

struct Fat;

impl Guest for Fat {
    fn handle(request: String) -> Result<String, String> {
        Ok(request)
    }
}

export!(Fat);
