//! What an uploaded component is, before and after it is compiled: its format (only binary
//! components are accepted), its kind (from its exports) and whether every import is one its
//! world offers or a permitted part of WASI 0.2.

use wasmtime::Engine;
use wasmtime::component::Component;

/// The three plugin worlds of `wit/plugin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// `world function`: `POST /v1/fn/{name}`.
    Function,
    /// `world ingest-transform`: every ingest of a tenant that enabled it.
    IngestTransform,
    /// `world reranker`: searches that name it.
    Reranker,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Function => "function",
            PluginKind::IngestTransform => "ingest-transform",
            PluginKind::Reranker => "reranker",
        }
    }

    /// The tvs interfaces a plugin of this kind may import.
    fn allowed_imports(self) -> &'static [&'static str] {
        match self {
            PluginKind::Function => &[
                "tvs:store/types@0.1.0",
                "tvs:store/collection@0.1.0",
                "tvs:store/embedder@0.1.0",
                "tvs:plugin/log@0.1.0",
            ],
            PluginKind::IngestTransform => &[
                "tvs:store/types@0.1.0",
                "tvs:store/embedder@0.1.0",
                "tvs:plugin/log@0.1.0",
            ],
            PluginKind::Reranker => &[
                "tvs:store/types@0.1.0",
                "tvs:store/collection-read@0.1.0",
                "tvs:plugin/log@0.1.0",
            ],
        }
    }
}

/// Export names that make a component a plugin of a kind.
const FUNCTION_EXPORT: &str = "handle";
const TRANSFORM_EXPORT: &str = "tvs:plugin/transform@0.1.0";
const RERANK_EXPORT: &str = "tvs:plugin/rerank@0.1.0";

/// WASI 0.2 packages a plugin may import. `wasi:filesystem` is linked with no preopened
/// directory, so a plugin importing it (componentize-js always does) reaches no file; sockets
/// and http are refused.
const WASI_ALLOWED: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// Checks the bytes are a binary component this host may compile; says what they are if not.
pub fn check_format(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the body is empty: send the component's bytes (Content-Type: application/wasm)".into());
    }
    if Engine::detect_precompiled(bytes).is_some() {
        return Err(
            "this is a precompiled wasmtime artifact; upload the component itself (.wasm), which tvs compiles".into(),
        );
    }
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"(") || trimmed.starts_with(b";;") {
        return Err(
            "this is WebAssembly text; upload the binary component (wasm-tools parse turns text into binary)".into(),
        );
    }
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Err("this is not WebAssembly (no \\0asm header)".into());
    }
    // The header's layer field: 0 for a core module, 1 for a component.
    match (bytes[6], bytes[7]) {
        (0, 0) => Err("this is a core WebAssembly module, not a component; build for wasm32-wasip2 (cargo build --target wasm32-wasip2) or wrap it with wasm-tools component new".into()),
        (1, 0) => Ok(()),
        _ => Err("unknown WebAssembly layer in the header".into()),
    }
}

/// The kind of a compiled component, and the sorted names of its imports and exports; or why
/// it cannot be a plugin (naming the offending import or the missing export).
pub fn check_component(
    engine: &Engine,
    component: &Component,
) -> Result<(PluginKind, Vec<String>, Vec<String>), String> {
    let ty = component.component_type();
    let mut exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
    let mut imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_owned()).collect();
    exports.sort();
    imports.sort();
    let kinds: Vec<PluginKind> = [
        (FUNCTION_EXPORT, PluginKind::Function),
        (TRANSFORM_EXPORT, PluginKind::IngestTransform),
        (RERANK_EXPORT, PluginKind::Reranker),
    ]
    .into_iter()
    .filter(|(name, _)| exports.iter().any(|e| e == name))
    .map(|(_, kind)| kind)
    .collect();
    let kind = match kinds.as_slice() {
        [kind] => *kind,
        [] => {
            return Err(format!(
                "the component exports none of `{FUNCTION_EXPORT}` (world function), `{TRANSFORM_EXPORT}` (world ingest-transform) or `{RERANK_EXPORT}` (world reranker); it exports: {}",
                if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                }
            ));
        }
        _ => return Err("the component exports more than one plugin world; build one world per plugin".into()),
    };
    let refused: Vec<String> = imports
        .iter()
        .filter(|import| {
            !(kind.allowed_imports().contains(&import.as_str())
                || WASI_ALLOWED
                    .iter()
                    .any(|prefix| import.starts_with(prefix) && import.contains("@0.2.")))
        })
        .map(|import| format!("`{import}`"))
        .collect();
    if !refused.is_empty() {
        return Err(format!(
            "the component imports {}, which a {} plugin is not given: it may import {} and WASI 0.2 cli, io, clocks, random and filesystem (with no directory: no files), never sockets or http (componentize-py: --stub-wasi; componentize-js: -d http -d fetch-event)",
            refused.join(", "),
            kind.as_str(),
            kind.allowed_imports().join(", ")
        ));
    }
    Ok((kind, imports, exports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_binary_components_pass_the_format_check() {
        let component = b"\0asm\x0d\0\x01\0";
        assert!(check_format(component).is_ok());
        let module = b"\0asm\x01\0\0\0";
        assert!(
            check_format(module)
                .expect_err("module")
                .contains("core WebAssembly module")
        );
        assert!(check_format(b"(component)").expect_err("text").contains("text"));
        assert!(check_format(b"").expect_err("empty").contains("empty"));
        assert!(
            check_format(b"PK\x03\x04zip")
                .expect_err("zip")
                .contains("not WebAssembly")
        );
        assert!(
            check_format(b"\0asm")
                .expect_err("truncated")
                .contains("not WebAssembly")
        );
    }
}
