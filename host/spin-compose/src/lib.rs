//! The composition of tvs on Spin, done at build time so that any Spin 3.x host runs one
//! self-contained component (Spin's own `[component.x.dependencies]` composes one level only,
//! and gives each dependency its own instance: see docs/spin.md, "How it works").
//!
//! ```text
//! storage (tvs:spin/storage) ──collection, embedder──▶ handler (guest/handler, unchanged)
//!    │ tenant, embedder                                   │ handler
//!    └──────────────────────────▶ front (spin-sdk) ◀──────┘
//!                                   │ wasi:http/incoming-handler@0.2.0
//! ```
//! One storage instance serves both the handler and the front, so the tenant the front binds
//! is the one the handler's collection calls reach. Every import left unwired (WASI,
//! `fermyon:spin/*`, and the type-only `tvs:store/types`) becomes an import of the result,
//! merged across the three.

use anyhow::Context as _;
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions, NodeId};

/// The exported interface Spin's HTTP trigger calls.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.0";

const COLLECTION: &str = "tvs:store/collection@0.1.0";
const EMBEDDER: &str = "tvs:store/embedder@0.1.0";
const HANDLER: &str = "tvs:store/handler@0.1.0";
const TENANT: &str = "tvs:spin/tenant@0.1.0";

/// The three built components.
#[derive(Debug)]
pub struct Parts {
    pub front: Vec<u8>,
    pub handler: Vec<u8>,
    pub storage: Vec<u8>,
}

/// The composed component's bytes (validated).
pub fn compose(parts: Parts) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let instantiate = |graph: &mut CompositionGraph, name: &str, bytes: Vec<u8>| -> anyhow::Result<NodeId> {
        let package = Package::from_bytes(name, None, bytes, graph.types_mut())
            .with_context(|| format!("reading the {name} component"))?;
        let id = graph.register_package(package)?;
        Ok(graph.instantiate(id))
    };
    let storage = instantiate(&mut graph, "tvs:spin-storage", parts.storage)?;
    let handler = instantiate(&mut graph, "tvs:guest-handler", parts.handler)?;
    let front = instantiate(&mut graph, "tvs:spin-front", parts.front)?;

    let wire = |graph: &mut CompositionGraph, from: NodeId, to: NodeId, name: &str| -> anyhow::Result<()> {
        let export = graph
            .alias_instance_export(from, name)
            .with_context(|| format!("{name} is not exported"))?;
        graph
            .set_instantiation_argument(to, name, export)
            .with_context(|| format!("{name} cannot be passed on"))?;
        Ok(())
    };
    wire(&mut graph, storage, handler, COLLECTION)?;
    wire(&mut graph, storage, handler, EMBEDDER)?;
    wire(&mut graph, storage, front, TENANT)?;
    wire(&mut graph, storage, front, EMBEDDER)?;
    wire(&mut graph, handler, front, HANDLER)?;

    let http = graph
        .alias_instance_export(front, INCOMING_HANDLER)
        .with_context(|| format!("the front does not export {INCOMING_HANDLER}"))?;
    graph.export(http, INCOMING_HANDLER)?;
    graph
        .encode(EncodeOptions {
            define_components: true,
            validate: true,
            processor: None,
        })
        .context("encoding the composition")
}
