//! One contract, three servers: the same table of HTTP requests runs against `tvs serve`, against
//! the Spin component (`spin build`'s output) in the Spin-shaped host of `spin_host` (which can
//! inject faults), and against the real Spin (`spin up`, see `spin_up`); each step's status is
//! asserted on every one, and their answers must be the same (scores to 1e-4, 0.05 where the
//! real Spin's own embedding model embedded the texts; the few fields that differ by design are
//! named in `comparable`). Ingest, search with
//! filters and MMR, get, delete, delete by filter, stats, embeddings, wrong keys, tenant tokens
//! (signing keys, scopes, rotation, every refusal), two tenants,
//! bad input changing nothing, and a restart.
//!
//! Also the imports check of the composed component against what a Spin 3.x platform provides.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::http::{ADMIN, Server, request};
use crate::spin_host::{SpinHost, component_imports, linker, spin_build};
use crate::spin_up::{SpinUp, spin_or_skip};

/// Who a step authenticates as.
#[derive(Debug, Clone, Copy)]
enum Who {
    Admin,
    /// The key of the tenant created by the step that named it.
    Tenant(&'static str),
    /// A well-formed key for a tenant, with a wrong secret.
    WrongSecret(&'static str),
    /// A tenant token, minted as an app would with the signing keys created so far.
    Token(Mint),
    Nobody,
}

/// A tenant token of a step: right, or wrong in one way.
#[derive(Debug, Clone, Copy)]
enum Mint {
    /// Signed with the `key`-th signing key created (0: the first) for `tenant` with `scope`.
    Signed {
        key: usize,
        tenant: &'static str,
        scope: &'static str,
    },
    Expired,
    NotYetValid,
    /// Claims a lifetime past the longest allowed (7 days).
    TooLong,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS384 with the right key.
    Hs384,
    /// HS256 with another secret under the right `kid`.
    WrongSecret,
    UnknownKid,
    /// A tenant claim outside the id grammar.
    BadTenant,
    /// A routing prefix naming another tenant than the claim.
    OtherPrefix,
    /// Three segments, `eyJ…`, not a JWT.
    Garbage,
}

/// A token of the newest signing key for `tenant`.
const fn token(tenant: &'static str, scope: &'static str) -> Who {
    Who::Token(Mint::Signed {
        key: usize::MAX,
        tenant,
        scope,
    })
}

#[derive(Debug)]
enum Step {
    Call {
        method: &'static str,
        path: &'static str,
        who: Who,
        body: Body,
        status: u16,
    },
    /// Stop the server and start it again on the same data.
    Restart,
}

#[derive(Debug)]
enum Body {
    None,
    Json(Value),
    /// Sent as is, with `Content-Type: application/json`.
    Raw(&'static str),
    /// Sent with `Content-Type: text/plain`.
    Text(&'static str),
}

fn call(method: &'static str, path: &'static str, who: Who, body: Value, status: u16) -> Step {
    Step::Call {
        method,
        path,
        who,
        body: if body.is_null() { Body::None } else { Body::Json(body) },
        status,
    }
}

fn raw(method: &'static str, path: &'static str, who: Who, body: Body, status: u16) -> Step {
    Step::Call {
        method,
        path,
        who,
        body,
        status,
    }
}

fn vector_docs() -> Value {
    json!({"documents": [
        {"id": "north", "text": "north", "vector": [1.0, 0.0, 0.0, 0.0], "metadata": {"kind": "a", "n": 1}},
        {"id": "east", "text": "east", "vector": [0.0, 1.0, 0.0, 0.2], "metadata": {"kind": "b", "n": 2}},
        {"id": "up", "text": "up", "vector": [0.0, 0.0, 1.0, 0.5], "metadata": {"kind": "a", "n": 3}},
        {"id": "north-east", "text": "north-east", "vector": [0.7, 0.7, 0.0, 0.0], "metadata": {"kind": "b", "n": 4}},
        {"id": "nearly-north", "text": "nearly north", "vector": [0.99, 0.05, 0.0, 0.0], "metadata": {"kind": "a", "n": 5}},
        {"id": "a b/c#1", "text": "an id to escape", "vector": [0.0, 0.0, 0.0, 1.0], "metadata": {}}
    ]})
}

/// `north` of [`vector_docs`] as it is.
fn north_again() -> Value {
    json!({"documents": [vector_docs()["documents"][0].clone()]})
}

/// The table. Tenant `vec` stores client vectors (l2), `text` embeds with the local model.
fn steps() -> Vec<Step> {
    use Who::*;
    let vec = Tenant("vec");
    let text = Tenant("text");
    // A read token for `vec` of the first signing key, which is later revoked.
    let first_key = Token(Mint::Signed {
        key: 0,
        tenant: "vec",
        scope: "read",
    });
    let q = |body: Value| body;
    vec![
        // Admin: create tenants; a tenant key is not the admin key; bad shapes.
        call(
            "POST",
            "/v1/tenants",
            Admin,
            json!({"id": "vec", "dims": 4, "metric": "l2", "embedding_model": "none", "max_documents": 8}),
            201,
        ),
        call("POST", "/v1/tenants", Admin, json!({"id": "text"}), 201),
        call(
            "POST",
            "/v1/tenants",
            Admin,
            json!({"id": "vec", "dims": 4, "embedding_model": "none"}),
            409,
        ),
        call(
            "POST",
            "/v1/tenants",
            Admin,
            json!({"id": "../etc", "dims": 4, "embedding_model": "none"}),
            400,
        ),
        call(
            "POST",
            "/v1/tenants",
            Admin,
            json!({"id": "m", "dims": 8, "embedding_model": "all-minilm-l6-v2"}),
            400,
        ),
        call(
            "POST",
            "/v1/tenants",
            Admin,
            json!({"id": "m", "embedding_model": "all-mpnet-base-v2"}),
            400,
        ),
        call("POST", "/v1/tenants", vec, json!({"id": "x", "dims": 4}), 403),
        call("POST", "/v1/tenants", Nobody, json!({"id": "x", "dims": 4}), 401),
        // Ingest and read back.
        call("POST", "/v1/documents", vec, vector_docs(), 200),
        call("GET", "/v1/stats", vec, Value::Null, 200),
        call("GET", "/v1/documents/north", vec, Value::Null, 200),
        call("GET", "/v1/documents/a%20b%2Fc%231", vec, Value::Null, 200),
        call("GET", "/v1/documents/missing", vec, Value::Null, 404),
        // Search: plain, filtered, MMR.
        call(
            "POST",
            "/v1/search",
            vec,
            q(json!({"vector": [1.0, 0.0, 0.0, 0.0], "top_k": 3})),
            200,
        ),
        call(
            "POST",
            "/v1/search",
            vec,
            q(json!({"vector": [1.0, 0.0, 0.0, 0.0], "top_k": 3, "filter": {"kind": "b"}})),
            200,
        ),
        call(
            "POST",
            "/v1/search",
            vec,
            q(
                json!({"vector": [1.0, 0.0, 0.0, 0.0], "top_k": 3, "filter": {"$or": [{"n": {"$gte": 4}}, {"kind": {"$in": ["x", "a"]}}]}}),
            ),
            200,
        ),
        call(
            "POST",
            "/v1/search",
            vec,
            q(json!({"vector": [1.0, 0.1, 0.0, 0.0], "top_k": 2, "mmr": {"fetch_k": 5, "lambda_mult": 0.3}})),
            200,
        ),
        call(
            "POST",
            "/v1/search",
            vec,
            q(json!({"vector": [1.0, 0.0, 0.0, 0.0]})),
            200,
        ),
        // Wrong keys: nothing is answered.
        call("GET", "/v1/stats", WrongSecret("vec"), Value::Null, 401),
        call("GET", "/v1/stats", Nobody, Value::Null, 401),
        call("GET", "/v1/stats", Admin, Value::Null, 401),
        call(
            "POST",
            "/v1/search",
            WrongSecret("vec"),
            q(json!({"vector": [1.0, 0.0, 0.0, 0.0]})),
            401,
        ),
        // The other tenant sees none of it.
        call("GET", "/v1/stats", text, Value::Null, 200),
        call("GET", "/v1/documents/north", text, Value::Null, 404),
        call(
            "POST",
            "/v1/documents/delete",
            text,
            json!({"ids": ["north", "east"]}),
            200,
        ),
        // Bad input: a 4xx, and nothing changes (checked by the stats and search after).
        call(
            "POST",
            "/v1/documents",
            vec,
            json!({"documents": [{"id": "bad", "vector": [1.0, 2.0]}]}),
            400,
        ),
        call(
            "POST",
            "/v1/documents",
            vec,
            json!({"documents": [{"id": "ok", "vector": [1.0, 0.0, 0.0, 0.0]}, {"id": "bad", "vector": [1.0]}]}),
            400,
        ),
        call("POST", "/v1/documents", vec, json!({"documents": []}), 400),
        call(
            "POST",
            "/v1/documents",
            vec,
            json!({"documents": [{"id": "t", "text": "no model here"}]}),
            400,
        ),
        call(
            "POST",
            "/v1/documents",
            vec,
            json!({"documents": [{"id": "x", "vector": [0.0, 0.0, 0.0, 1.0]}, {"id": "y", "vector": [0.0, 0.0, 0.0, 1.0]}, {"id": "z", "vector": [0.0, 0.0, 0.0, 1.0]}]}),
            413,
        ),
        // The admin changes the quota: down to the count refuses one more, back up lets it be.
        call("PATCH", "/v1/tenants/vec", Admin, json!({"max_documents": 6}), 200),
        call(
            "POST",
            "/v1/documents",
            vec,
            json!({"documents": [{"id": "x", "vector": [0.0, 0.0, 0.0, 1.0]}]}),
            413,
        ),
        call("PATCH", "/v1/tenants/vec", Admin, json!({"max_documents": 0}), 400),
        call("PATCH", "/v1/tenants/vec", vec, json!({"max_documents": 9}), 403),
        call("PATCH", "/v1/tenants/ghost", Admin, json!({"max_documents": 9}), 404),
        call("PATCH", "/v1/tenants/vec", Admin, json!({"max_documents": 8}), 200),
        // Rate limits: a bucket holds one second of its rate, so at 0.2 requests a second the
        // first request passes and leaves a debt the next one waits 5 s for; removed, none.
        call(
            "PATCH",
            "/v1/tenants/vec",
            Admin,
            json!({"requests_per_second": 0.2}),
            200,
        ),
        call("GET", "/v1/documents/north", vec, Value::Null, 200),
        call("GET", "/v1/documents/north", vec, Value::Null, 429),
        call(
            "PATCH",
            "/v1/tenants/vec",
            Admin,
            json!({"requests_per_second": -1}),
            400,
        ),
        call(
            "PATCH",
            "/v1/tenants/vec",
            Admin,
            json!({"requests_per_second": null}),
            200,
        ),
        call("GET", "/v1/documents/north", vec, Value::Null, 200),
        // Ingest bytes: an upsert's body is charged; this one (the same document again, so
        // nothing changes) is over the second's 10 bytes and leaves a debt.
        call(
            "PATCH",
            "/v1/tenants/vec",
            Admin,
            json!({"ingest_bytes_per_second": 10}),
            200,
        ),
        call("POST", "/v1/documents", vec, north_again(), 200),
        call("POST", "/v1/documents", vec, north_again(), 429),
        call("GET", "/v1/documents/north", vec, Value::Null, 200),
        call(
            "PATCH",
            "/v1/tenants/vec",
            Admin,
            json!({"ingest_bytes_per_second": null}),
            200,
        ),
        raw(
            "POST",
            "/v1/documents",
            vec,
            Body::Raw("{\"documents\": [{\"id\": \"n\", \"vector\": [1e999, 0, 0, 0]}]}"),
            400,
        ),
        raw("POST", "/v1/documents", vec, Body::Raw("{\"documents\": ["), 400),
        raw("POST", "/v1/documents", vec, Body::Text("{\"documents\": []}"), 415),
        call(
            "POST",
            "/v1/documents",
            vec,
            json!({"documents": [{"id": "u", "vector": [1.0, 0.0, 0.0, 0.0], "colour": "red"}]}),
            400,
        ),
        call(
            "POST",
            "/v1/search",
            vec,
            json!({"vector": [1.0, 0.0, 0.0, 0.0], "filter": {"n": {"$near": 1}}}),
            400,
        ),
        call(
            "POST",
            "/v1/search",
            vec,
            json!({"vector": [1.0, 0.0, 0.0, 0.0], "top_k": 0}),
            400,
        ),
        call(
            "POST",
            "/v1/search",
            vec,
            json!({"vector": [1.0, 0.0, 0.0, 0.0], "top_k": 100000}),
            400,
        ),
        call("POST", "/v1/search", vec, json!({"vector": [1.0, 0.0]}), 400),
        call("POST", "/v1/search", vec, json!({"query": "north"}), 400),
        call("POST", "/v1/documents/delete", vec, json!({}), 400),
        call("POST", "/v1/documents/delete", vec, json!({"filter": {"$bad": 1}}), 400),
        call("GET", "/v1/stats", vec, Value::Null, 200),
        call(
            "POST",
            "/v1/search",
            vec,
            json!({"vector": [0.0, 0.0, 0.0, 1.0], "top_k": 10}),
            200,
        ),
        // Text tenant: the model embeds documents and queries, and serves /v1/embeddings.
        call(
            "POST",
            "/v1/documents",
            text,
            json!({"documents": [
                {"id": "password", "text": "What are the steps to recover my account if I forgot my login credentials?"},
                {"id": "oven", "text": "I reset the oven timer and taped the wifi password to the fridge."},
                {"id": "plants", "text": "Water the tomatoes twice a week in summer.", "metadata": {"topic": "garden"}}
            ]}),
            200,
        ),
        call(
            "POST",
            "/v1/search",
            text,
            json!({"query": "How do I reset my password?", "top_k": 2}),
            200,
        ),
        call(
            "POST",
            "/v1/search",
            text,
            json!({"query": "gardening", "top_k": 1, "filter": {"topic": "garden"}}),
            200,
        ),
        call(
            "POST",
            "/v1/embeddings",
            text,
            json!({"input": ["hello world", "vector stores"], "model": "all-minilm-l6-v2"}),
            200,
        ),
        call(
            "POST",
            "/v1/embeddings",
            text,
            json!({"input": "hello", "model": "text-embedding-3-small"}),
            400,
        ),
        call(
            "POST",
            "/v1/embeddings",
            text,
            json!({"input": "hello", "dimensions": 256}),
            400,
        ),
        call(
            "POST",
            "/v1/embeddings",
            text,
            json!({"input": "hello", "encoding_format": "int8"}),
            400,
        ),
        call("POST", "/v1/embeddings", vec, json!({"input": "hello"}), 400),
        // Deletes: by id, by filter, of a missing id.
        call("DELETE", "/v1/documents/east", vec, Value::Null, 200),
        call("DELETE", "/v1/documents/east", vec, Value::Null, 404),
        call(
            "POST",
            "/v1/documents/delete",
            vec,
            json!({"filter": {"kind": "a"}}),
            200,
        ),
        call(
            "POST",
            "/v1/documents/delete",
            vec,
            json!({"ids": ["a b/c#1", "gone"]}),
            200,
        ),
        call("GET", "/v1/stats", vec, Value::Null, 200),
        // Upsert replaces by id.
        call(
            "POST",
            "/v1/documents",
            vec,
            json!({"documents": [{"id": "north-east", "text": "moved", "vector": [0.0, 0.0, 0.0, 1.0], "metadata": {"kind": "c"}}]}),
            200,
        ),
        // Tenant tokens: signing keys are the admin's; a token reaches the tenant of its claim
        // within its scope, and every wrong token is refused with its reason.
        call("POST", "/v1/admin/signing-keys", vec, Value::Null, 403),
        call("POST", "/v1/admin/signing-keys", Admin, Value::Null, 201),
        call(
            "GET",
            "/v1/documents/north-east",
            token("vec", "read"),
            Value::Null,
            200,
        ),
        call(
            "POST",
            "/v1/search",
            token("vec", "read"),
            json!({"vector": [0.0, 0.0, 0.0, 1.0], "top_k": 2}),
            200,
        ),
        call("GET", "/v1/stats", token("text", "read write"), Value::Null, 200),
        call(
            "POST",
            "/v1/documents/delete",
            token("vec", "read"),
            json!({"ids": ["absent"]}),
            403,
        ),
        call("DELETE", "/v1/documents/absent", token("vec", "read"), Value::Null, 403),
        call(
            "POST",
            "/v1/documents/delete",
            token("vec", "write"),
            json!({"ids": ["absent"]}),
            200,
        ),
        call(
            "GET",
            "/v1/documents/north-east",
            token("vec", "write"),
            Value::Null,
            403,
        ),
        call("GET", "/v1/stats", token("ghost", "read"), Value::Null, 404),
        call("GET", "/v1/stats", Token(Mint::Expired), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::NotYetValid), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::TooLong), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::AlgNone), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::Hs384), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::WrongSecret), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::UnknownKid), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::BadTenant), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::OtherPrefix), Value::Null, 401),
        call("GET", "/v1/stats", Token(Mint::Garbage), Value::Null, 401),
        // Rotation with an overlap: the old key works until it is revoked, then its tokens are
        // refused and the new key's still work.
        call("POST", "/v1/admin/signing-keys", Admin, Value::Null, 201),
        call("GET", "/v1/documents/north-east", first_key, Value::Null, 200),
        call("DELETE", "/v1/admin/signing-keys/{key0}", Admin, Value::Null, 200),
        call("DELETE", "/v1/admin/signing-keys/{key0}", Admin, Value::Null, 200),
        call("DELETE", "/v1/admin/signing-keys/absent", Admin, Value::Null, 404),
        call("GET", "/v1/documents/north-east", first_key, Value::Null, 401),
        call(
            "GET",
            "/v1/documents/north-east",
            token("vec", "read"),
            Value::Null,
            200,
        ),
        call("GET", "/v1/admin/signing-keys", Admin, Value::Null, 200),
        call("GET", "/v1/admin/signing-keys", vec, Value::Null, 403),
        // A restart keeps everything acknowledged.
        Step::Restart,
        call("GET", "/v1/stats", vec, Value::Null, 200),
        call("GET", "/v1/documents/north-east", vec, Value::Null, 200),
        call(
            "GET",
            "/v1/documents/north-east",
            token("vec", "read"),
            Value::Null,
            200,
        ),
        call("GET", "/v1/documents/north-east", first_key, Value::Null, 401),
        call(
            "POST",
            "/v1/search",
            vec,
            json!({"vector": [0.0, 0.0, 0.0, 1.0], "top_k": 5}),
            200,
        ),
        call(
            "POST",
            "/v1/search",
            text,
            json!({"query": "forgot my login", "top_k": 1}),
            200,
        ),
        // Keys: only the admin rotates them; the new key works.
        call("POST", "/v1/tenants/vec/keys", vec, Value::Null, 403),
        call("POST", "/v1/tenants/vec/keys", Admin, Value::Null, 200),
        call("GET", "/v1/stats", vec, Value::Null, 200),
        call("POST", "/v1/tenants/nope/keys", Admin, Value::Null, 404),
        call("GET", "/v1/nothing-here", vec, Value::Null, 404),
    ]
}

/// A server under test.
trait Api {
    fn name(&self) -> &'static str;
    fn addr(&self) -> SocketAddr;
    fn restart(&mut self);
}

struct Serve {
    server: Option<Server>,
    data: tempfile::TempDir,
}

impl Api for Serve {
    fn name(&self) -> &'static str {
        "tvs serve"
    }
    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").addr
    }
    fn restart(&mut self) {
        drop(self.server.take());
        self.server = Some(Server::start(self.data.path(), &[], &[]));
    }
}

struct Spin {
    host: Option<SpinHost>,
    kv: tempfile::TempDir,
}

impl Spin {
    fn start(kv: &std::path::Path) -> SpinHost {
        SpinHost::start(kv, &[("admin_key", ADMIN)])
    }
}

impl Api for Spin {
    fn name(&self) -> &'static str {
        "Spin component"
    }
    fn addr(&self) -> SocketAddr {
        self.host.as_ref().expect("running").addr
    }
    fn restart(&mut self) {
        drop(self.host.take());
        self.host = Some(Spin::start(self.kv.path()));
    }
}

/// The real Spin: `spin up` of the built `spin.toml`, its state (SQLite key-value) in `state`.
struct RealSpin {
    up: Option<SpinUp>,
    spin: std::path::PathBuf,
    state: tempfile::TempDir,
}

impl RealSpin {
    fn start(spin: std::path::PathBuf, variables: &[(&str, &str)]) -> RealSpin {
        let state = tempfile::tempdir().expect("tempdir");
        RealSpin {
            up: Some(SpinUp::start(&spin, state.path(), variables)),
            spin,
            state,
        }
    }
}

impl Api for RealSpin {
    fn name(&self) -> &'static str {
        "spin up"
    }
    fn addr(&self) -> SocketAddr {
        self.up.as_ref().expect("running").addr
    }
    fn restart(&mut self) {
        drop(self.up.take());
        self.up = Some(SpinUp::start(&self.spin, self.state.path(), &[("admin_key", ADMIN)]));
    }
}

/// Runs the table on one server; returns each call's (status, body).
/// The token a step names, from the signing keys (kid, HMAC key) created so far.
fn mint(how: Mint, signing: &[(String, Vec<u8>)]) -> String {
    use crate::tokens::{claims, sign};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::Algorithm;
    let (kid, key) = signing.last().expect("a signing key was created before a token step");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let with = |fields: Value| {
        let mut claims = claims("vec", "read");
        for (k, v) in fields.as_object().expect("fields") {
            claims[k] = v.clone();
        }
        sign(Algorithm::HS256, kid, key, &claims)
    };
    match how {
        Mint::Signed { key: n, tenant, scope } => {
            let (kid, key) = signing.get(n).unwrap_or_else(|| signing.last().expect("a key"));
            sign(Algorithm::HS256, kid, key, &claims(tenant, scope))
        }
        Mint::Expired => with(json!({"iat": now - 600, "exp": now - 300})),
        Mint::NotYetValid => with(json!({"nbf": now + 300, "exp": now + 900})),
        Mint::TooLong => with(json!({"exp": now + 8 * 86_400})),
        Mint::AlgNone => {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#));
            let body = URL_SAFE_NO_PAD.encode(claims("vec", "read write").to_string());
            format!("{header}.{body}.")
        }
        Mint::Hs384 => sign(Algorithm::HS384, kid, key, &claims("vec", "read")),
        Mint::WrongSecret => sign(Algorithm::HS256, kid, &[9; 32], &claims("vec", "read")),
        Mint::UnknownKid => sign(Algorithm::HS256, "0000000000000000", key, &claims("vec", "read")),
        Mint::BadTenant => with(json!({"tenant": "../vec"})),
        Mint::OtherPrefix => format!("tvs.text.{}", with(json!({}))),
        Mint::Garbage => "eyJub3QiOiJqc29uIg.eyJ.c2ln".to_owned(),
    }
}

fn run(api: &mut dyn Api) -> Vec<(u16, Value)> {
    let mut keys: std::collections::HashMap<&'static str, String> = Default::default();
    let mut signing: Vec<(String, Vec<u8>)> = Vec::new();
    let mut answers = Vec::new();
    for (index, step) in steps().into_iter().enumerate() {
        let Step::Call {
            method,
            path,
            who,
            body,
            status,
        } = step
        else {
            api.restart();
            continue;
        };
        let key = match who {
            Who::Admin => Some(ADMIN.to_owned()),
            Who::Tenant(t) => Some(keys.get(t).unwrap_or_else(|| panic!("no key for {t} yet")).clone()),
            Who::WrongSecret(t) => Some(format!("tvs.{t}.{}", "0".repeat(64))),
            Who::Token(how) => Some(mint(how, &signing)),
            Who::Nobody => None,
        };
        let path: &str = &match signing.first() {
            Some((kid, _)) => path.replace("{key0}", kid),
            None => path.to_owned(),
        };
        let (content_type, bytes): (Option<&str>, Vec<u8>) = match &body {
            Body::None => (None, Vec::new()),
            Body::Json(v) => (Some("application/json"), v.to_string().into_bytes()),
            Body::Raw(text) => (Some("application/json"), text.as_bytes().to_vec()),
            Body::Text(text) => (Some("text/plain"), text.as_bytes().to_vec()),
        };
        let (got, answer) = request(api.addr(), method, path, key.as_deref(), content_type, &bytes);
        assert_eq!(
            got,
            status,
            "{}: step {index} {method} {path} answered {answer}",
            api.name()
        );
        if status == 201 && path == "/v1/admin/signing-keys" {
            let secret = answer["secret"].as_str().expect("the secret, once");
            signing.push(crate::tokens::parse_secret(secret));
        } else if status == 201 {
            let id = answer["id"].as_str().expect("created id");
            let id: &'static str = Box::leak(id.to_owned().into_boxed_str());
            keys.insert(id, answer["api_key"].as_str().expect("key").to_owned());
        }
        if path.ends_with("/keys") && got == 200 {
            keys.insert("vec", answer["api_key"].as_str().expect("key").to_owned());
        }
        answers.push((got, answer));
    }
    answers
}

/// A body as both servers must give it: keys and the fields that differ by design left out
/// (`bytes`: the HNSW index's resident size vs none; `usage`: tokens counted by tvs, not passed
/// through Spin's embedder; `max_documents`: every Spin tenant has one, from the `max_documents`
/// variable when created without, while `tvs serve` shows only one that was set (both show a
/// set one, asserted below); `max_bytes`, `stored_bytes`: quotas Spin does not offer; `index`:
/// how Spin's clustered layout is read), and
/// parse-error wording
/// (axum's vs serde's) cut to its prefix.
fn comparable(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "api_key"
                            | "bytes"
                            | "usage"
                            | "max_documents"
                            | "max_bytes"
                            | "stored_bytes"
                            | "secret"
                            | "index"
                    )
                })
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("message", Value::String(m)) if m.starts_with("malformed JSON body") => {
                            json!("malformed JSON body")
                        }
                        // When a retry can pass depends on each server's clock.
                        ("message", Value::String(m)) if m.contains("; retry after ") => {
                            json!(m.split("; retry after ").next())
                        }
                        // jsonwebtoken's words vs tvs-guest-core's for a token that is no JWT.
                        ("message", Value::String(m)) if m.starts_with("the token is not a well-formed JWT") => {
                            json!("the token is not a well-formed JWT")
                        }
                        // A signing key's id and times are the server's own.
                        ("created_at" | "revoked_at", Value::Number(_)) => json!("<time>"),
                        ("id", Value::String(id)) if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                            json!("<kid>")
                        }
                        _ => comparable(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

/// Whether two comparable bodies are equal, numbers to `tolerance` (scores and vectors are
/// computed by different code on the servers).
fn close(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().expect("number") - y.as_f64().expect("number")).abs() <= tolerance
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y, tolerance))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w, tolerance)))
        }
        (x, y) => x == y,
    }
}

#[test]
fn the_data_routes_answer_the_same_on_tvs_serve_and_on_spin() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut serve = Serve {
        server: Some(Server::start(data.path(), &[], &[])),
        data,
    };
    let kv = tempfile::tempdir().expect("tempdir");
    let mut spin = Spin {
        host: Some(Spin::start(kv.path())),
        kv,
    };
    let on_serve = run(&mut serve);
    let on_spin = run(&mut spin);
    let calls: Vec<_> = steps()
        .into_iter()
        .filter_map(|s| match s {
            Step::Call { method, path, .. } => Some(format!("{method} {path}")),
            Step::Restart => None,
        })
        .collect();
    for ((call, (status, a)), (_, b)) in calls.iter().zip(&on_serve).zip(&on_spin) {
        assert!(
            close(&comparable(a), &comparable(b), 1e-4),
            "{call} ({status}) differs:\n tvs serve: {a}\n Spin:      {b}"
        );
    }
    if let Some(binary) = spin_or_skip("the contract on the real Spin") {
        let mut real = RealSpin::start(binary, &[("admin_key", ADMIN)]);
        let on_real = run(&mut real);
        // Spin's own all-minilm-l6-v2 pools a padded batch over its padding too: scores of texts
        // it embedded (the `text` tenant's) differ from sentence-transformers' by up to 0.02
        // (0.013 measured here); everything else to 1e-4.
        let embedded_by_spin: Vec<bool> = steps()
            .into_iter()
            .filter_map(|s| match s {
                Step::Call { who, .. } => Some(matches!(
                    who,
                    Who::Tenant("text") | Who::Token(Mint::Signed { tenant: "text", .. })
                )),
                Step::Restart => None,
            })
            .collect();
        for (((call, (status, a)), (_, b)), by_spin) in calls.iter().zip(&on_serve).zip(&on_real).zip(embedded_by_spin)
        {
            let tolerance = if by_spin { 0.05 } else { 1e-4 };
            assert!(
                close(&comparable(a), &comparable(b), tolerance),
                "{call} ({status}) differs:\n tvs serve: {a}\n spin up:   {b}"
            );
        }
    }
    // The answers say what a user relies on, not only that they agree: bad input changed
    // nothing (6 before and after it), the deletes left one, the restart kept it.
    let counts: Vec<&Value> = calls
        .iter()
        .zip(&on_spin)
        .filter(|(c, (status, body))| c.as_str() == "GET /v1/stats" && *status == 200 && body["dims"] == 4)
        .map(|(_, (_, body))| &body["count"])
        .collect();
    assert_eq!(counts, [&json!(6), &json!(6), &json!(1), &json!(1), &json!(1)]);
    // Both show the quota `vec` was created with beside its count.
    for (name, answers) in [("tvs serve", &on_serve), ("Spin", &on_spin)] {
        let quotas: Vec<&Value> = calls
            .iter()
            .zip(answers)
            .filter(|(c, (status, body))| c.as_str() == "GET /v1/stats" && *status == 200 && body["dims"] == 4)
            .map(|(_, (_, body))| &body["max_documents"])
            .collect();
        assert!(
            quotas.len() == 5 && quotas.iter().all(|q| **q == 8),
            "{name}: {quotas:?}"
        );
    }
    let search = on_spin
        .iter()
        .zip(&calls)
        .find(|(_, c)| c.as_str() == "POST /v1/search")
        .expect("a search");
    let ids: Vec<&str> = search.0.1["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["north", "nearly-north", "north-east"]);
    // Each wrong token is refused for its own reason (the same words on both servers, above).
    let whos = steps().into_iter().filter_map(|s| match s {
        Step::Call { who, .. } => Some(who),
        Step::Restart => None,
    });
    let mut refused = 0;
    for (who, (status, body)) in whos.zip(&on_spin) {
        let Who::Token(how) = who else { continue };
        let reason = match how {
            Mint::Signed { .. } if *status == 401 => "revoked",
            Mint::Signed { .. } => continue,
            Mint::Expired => "has expired",
            Mint::NotYetValid => "not valid yet",
            Mint::TooLong => "lives longer",
            Mint::AlgNone | Mint::Hs384 => "algorithm must be HS256",
            Mint::WrongSecret => "signature does not match",
            Mint::UnknownKid => "does not know",
            Mint::BadTenant => "tenant claim",
            Mint::OtherPrefix => "routing prefix",
            Mint::Garbage => "not a well-formed JWT",
        };
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{how:?}: expected {reason:?} in {body}");
        refused += 1;
    }
    assert_eq!(refused, 12, "every wrong token was tried");
}

/// Imports outside what a Spin 3.x platform provides, by name: WASI 0.2, the `fermyon:spin`
/// 2.0 and `wasi:keyvalue` draft2 interfaces vendored from spin-sdk 5.2.0, and `tvs:store/types`
/// (types only, which needs no definition). Then the component must link against exactly the Spin-shaped host.
#[test]
fn the_composed_component_imports_only_what_spin_provides() {
    let interfaces = |dir: &str, package: &str| -> Vec<String> {
        std::fs::read_dir(crate::spin_host::repo_root().join(dir))
            .expect("vendored WIT")
            .flat_map(|entry| {
                let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
                text.lines()
                    .filter_map(|l| {
                        l.trim()
                            .strip_prefix("interface ")?
                            .split_whitespace()
                            .next()
                            .map(str::to_owned)
                    })
                    .collect::<Vec<_>>()
            })
            .map(|name| package.replace("{}", &name))
            .collect()
    };
    let mut vendored = interfaces("wit/spin/deps/fermyon-spin", "fermyon:spin/{}@2.0.0");
    vendored.extend(interfaces(
        "wit/spin/deps/wasi-keyvalue",
        "wasi:keyvalue/{}@0.2.0-draft2",
    ));
    assert!(
        vendored.iter().any(|n| n == "fermyon:spin/key-value@2.0.0"),
        "{vendored:?}"
    );
    let (engine, linker) = linker();
    let component = wasmtime::component::Component::from_file(&engine, spin_build()).expect("compile");
    let imports = component_imports(&engine, &component);
    let outside: Vec<&String> = imports
        .iter()
        .filter(|name| {
            // WASI 0.2 releases (0.2.0 to 0.2.x), not drafts or release candidates.
            let wasi_02 = name.starts_with("wasi:")
                && name
                    .split_once("@0.2.")
                    .is_some_and(|(_, patch)| patch.chars().all(|c| c.is_ascii_digit()));
            !(wasi_02 || vendored.contains(name) || name.as_str() == "tvs:store/types@0.1.0")
        })
        .collect();
    assert!(
        outside.is_empty(),
        "imports a Spin 3.x platform does not provide: {outside:?}"
    );
    for needed in [
        "fermyon:spin/key-value@2.0.0",
        "fermyon:spin/llm@2.0.0",
        "fermyon:spin/variables@2.0.0",
        "wasi:keyvalue/atomics@0.2.0-draft2",
    ] {
        assert!(
            imports.iter().any(|i| i == needed),
            "{needed} not imported: {imports:?}"
        );
    }
    let exports: Vec<String> = component
        .component_type()
        .exports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    assert_eq!(exports, ["wasi:http/incoming-handler@0.2.0"]);
    if let Err(e) = linker.instantiate_pre(&component) {
        panic!("does not link against the Spin-shaped host: {e:#}");
    }
}

/// Many clients writing one tenant at once (on Spin: as many component instances, each reading
/// the tenant and committing by compare-and-swap): every acknowledged upsert and delete holds.
fn concurrent_writers_keep_every_acknowledged_write(api: &dyn Api) {
    let addr = api.addr();
    let (status, created) = request(
        addr,
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some("application/json"),
        json!({"id": "busy", "dims": 2, "metric": "l2", "embedding_model": "none", "max_documents": 1000})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201, "{}: {created}", api.name());
    let key = created["api_key"].as_str().expect("key").to_owned();
    const CLIENTS: usize = 6;
    const WRITES: usize = 15;
    let kept: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let key = key.clone();
                scope.spawn(move || {
                    let mut kept = Vec::new();
                    for n in 0..WRITES {
                        let id = format!("c{c}-{n}");
                        let body = json!({"documents": [{"id": id, "vector": [c as f32, n as f32]}]}).to_string();
                        let (status, answer) = request(
                            addr,
                            "POST",
                            "/v1/documents",
                            Some(&key),
                            Some("application/json"),
                            body.as_bytes(),
                        );
                        assert_eq!(status, 200, "{answer}");
                        kept.push(id);
                        if n % 5 == 4 {
                            let gone = kept.remove(kept.len() - 2);
                            let path = format!("/v1/documents/{gone}");
                            let (status, answer) = request(addr, "DELETE", &path, Some(&key), None, b"");
                            assert_eq!(status, 200, "{answer}");
                        }
                    }
                    kept
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("client")).collect()
    });
    let (_, stats) = request(addr, "GET", "/v1/stats", Some(&key), None, b"");
    assert_eq!(stats["count"], kept.len(), "{}: {stats}", api.name());
    for id in &kept {
        let (status, _) = request(addr, "GET", &format!("/v1/documents/{id}"), Some(&key), None, b"");
        assert_eq!(status, 200, "{}: acknowledged {id} is missing", api.name());
    }
}

#[test]
fn concurrent_writes_to_one_tenant_lose_nothing_on_any_server() {
    let data = tempfile::tempdir().expect("tempdir");
    let serve = Serve {
        server: Some(Server::start(data.path(), &[], &[])),
        data,
    };
    concurrent_writers_keep_every_acknowledged_write(&serve);
    let kv = tempfile::tempdir().expect("tempdir");
    let spin = Spin {
        host: Some(Spin::start(kv.path())),
        kv,
    };
    concurrent_writers_keep_every_acknowledged_write(&spin);
    if let Some(binary) = spin_or_skip("concurrent writers on the real Spin") {
        concurrent_writers_keep_every_acknowledged_write(&RealSpin::start(binary, &[("admin_key", ADMIN)]));
    }
}

/// What only the Spin app does: the document cap of the `max_documents` variable (every
/// request reads the whole tenant), and admin routes off while `admin_key` is empty.
#[test]
fn spin_caps_tenants_by_its_variable_and_needs_an_admin_key() {
    let kv = tempfile::tempdir().expect("tempdir");
    let host = SpinHost::start(kv.path(), &[("admin_key", ADMIN), ("max_documents", "3")]);
    let create = |body: Value| {
        request(
            host.addr,
            "POST",
            "/v1/tenants",
            Some(ADMIN),
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    };
    let (status, answer) = create(json!({"id": "big", "dims": 2, "embedding_model": "none", "max_documents": 4}));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .expect("message")
            .contains("max_documents may be at most 3"),
        "{answer}"
    );
    let (status, answer) = create(json!({"id": "capped", "dims": 2, "embedding_model": "none"}));
    assert_eq!(status, 201, "{answer}");
    let key = answer["api_key"].as_str().expect("key").to_owned();
    let upsert_key = key.clone();
    let upsert = |ids: &[&str]| {
        let docs: Vec<Value> = ids.iter().map(|id| json!({"id": id, "vector": [1.0, 0.5]})).collect();
        request(
            host.addr,
            "POST",
            "/v1/documents",
            Some(&key),
            Some("application/json"),
            json!({ "documents": docs }).to_string().as_bytes(),
        )
    };
    assert_eq!(upsert(&["a", "b", "c"]).0, 200);
    let (status, answer) = upsert(&["d"]);
    assert_eq!(
        (status, &answer["error"]["code"]),
        (413, &json!("quota_exceeded")),
        "{answer}"
    );
    assert_eq!(upsert(&["a"]).0, 200, "replacing a document needs no room");
    let (_, stats) = request(host.addr, "GET", "/v1/stats", Some(&key), None, b"");
    assert_eq!(stats["count"], 3);
    let (status, answer) = request(
        host.addr,
        "PATCH",
        "/v1/tenants/capped",
        Some(ADMIN),
        Some("application/json"),
        br#"{"max_documents": 4}"#,
    );
    assert_eq!(status, 400, "the variable caps a change too: {answer}");
    drop(host);

    // Rate limits for new tenants from the variables; a refusal says when to retry.
    let host = SpinHost::start(
        kv.path(),
        &[("admin_key", ADMIN), ("default_requests_per_second", "0.5")],
    );
    let (status, answer) = request(
        host.addr,
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some("application/json"),
        br#"{"id": "limited", "dims": 2, "embedding_model": "none"}"#,
    );
    assert_eq!(status, 201, "{answer}");
    let key = answer["api_key"].as_str().expect("key").to_owned();
    let (status, _, stats) = crate::http::request_with_head(host.addr, "GET", "/v1/stats", Some(&key), None, b"");
    assert_eq!(
        (status, &stats["rate_limits"]),
        (200, &json!({"requests_per_second": 0.5})),
        "{stats}"
    );
    let (status, head, answer) = crate::http::request_with_head(host.addr, "GET", "/v1/stats", Some(&key), None, b"");
    assert_eq!(
        (status, &answer["error"]["code"]),
        (429, &json!("rate_limited")),
        "{answer}"
    );
    let retry_after: u64 = crate::http::header(&head, "retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{head}");
    // Capped tenants made before the variable keep having no rate limit.
    let (_, _, old) = crate::http::request_with_head(host.addr, "GET", "/v1/stats", Some(&upsert_key), None, b"");
    assert!(old.get("rate_limits").is_none(), "{old}");
    drop(host);

    let host = SpinHost::start(kv.path(), &[]);
    let (status, answer) = request(
        host.addr,
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some("application/json"),
        br#"{"id": "x"}"#,
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .expect("message")
            .contains("admin_key"),
        "{answer}"
    );
}
