//! Tenant tokens against a real `tvs serve`: an app holding one signing secret mints JWTs for
//! its users (here with the `jsonwebtoken` crate, as any JWT library would), and each token
//! reaches its own tenant within its scopes. Every way a token can be wrong is refused with
//! its reason, and signing keys rotate with an overlap and survive a restart.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::http::{ADMIN, Server, call, create_tenant, ingest};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// (kid, HMAC key) of a signing secret `tvs_sk.{kid}.{key}`.
pub(crate) fn parse_secret(secret: &str) -> (String, Vec<u8>) {
    let parts: Vec<&str> = secret.split('.').collect();
    assert_eq!(parts.len(), 3, "{secret}");
    assert_eq!(parts[0], "tvs_sk");
    (
        parts[1].to_owned(),
        URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url key"),
    )
}

pub(crate) fn sign(alg: Algorithm, kid: &str, key: &[u8], claims: &Value) -> String {
    let header = Header {
        kid: Some(kid.to_owned()),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).expect("sign")
}

pub(crate) fn claims(tenant: &str, scope: &str) -> Value {
    json!({"tenant": tenant, "scope": scope, "iat": now(), "exp": now() + 600})
}

pub(crate) fn search(addr: std::net::SocketAddr, credential: &str) -> (u16, Value) {
    call(
        addr,
        "POST",
        "/v1/search",
        Some(credential),
        Some(&json!({"vector": [1, 0, 0, 0], "top_k": 5}).to_string()),
    )
}

fn refused(addr: std::net::SocketAddr, token: &str, reason: &str) {
    let (status, body) = search(addr, token);
    assert_eq!(status, 401, "{reason}: {body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(message.contains(reason), "expected {reason:?} in {message:?}");
}

pub(crate) fn new_signing_key(addr: std::net::SocketAddr) -> (String, String) {
    let (status, body) = call(addr, "POST", "/v1/admin/signing-keys", Some(ADMIN), None);
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().expect("the secret, once").to_owned();
    (body["id"].as_str().expect("id").to_owned(), secret)
}

#[test]
fn tokens_reach_their_tenant_within_their_scopes_and_every_bad_token_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[], &[]);
    let addr = server.addr;
    let bob_key = create_tenant(addr, "bob", 4);
    create_tenant(addr, "alice", 4);
    assert_eq!(
        call(addr, "POST", "/v1/admin/signing-keys", Some(&bob_key), None).0,
        403,
        "a tenant key cannot create signing keys"
    );
    let (key_id, secret) = new_signing_key(addr);
    let (kid, hmac) = parse_secret(&secret);
    assert_eq!(kid, key_id);
    let (status, listed) = call(addr, "GET", "/v1/admin/signing-keys", Some(ADMIN), None);
    assert_eq!(status, 200);
    assert_eq!(listed["signing_keys"][0]["id"], key_id.as_str());
    assert!(
        !listed.to_string().contains(&secret[7..]),
        "the list never shows a secret"
    );

    let alice_rw = sign(Algorithm::HS256, &kid, &hmac, &claims("alice", "read write"));
    let alice_read = sign(Algorithm::HS256, &kid, &hmac, &claims("alice", "read"));
    let (status, body) = ingest(
        addr,
        &alice_rw,
        json!([{"id": "a1", "text": "alice's", "vector": [1, 0, 0, 0]}]),
    );
    assert_eq!(status, 200, "{body}");
    ingest(
        addr,
        &bob_key,
        json!([{"id": "b1", "text": "bob's", "vector": [1, 0, 0, 0]}]),
    );
    let (status, body) = search(addr, &alice_read);
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["a1"], "alice's token sees alice's documents only");
    // The routing prefix a proxy hashes on, like a key's.
    assert_eq!(search(addr, &format!("tvs.alice.{alice_read}")).0, 200);
    refused(addr, &format!("tvs.bob.{alice_read}"), "routing prefix");

    // A read token on a write route, a read+write token on a plugin route: 403, nothing written.
    let (status, body) = ingest(
        addr,
        &alice_read,
        json!([{"id": "a2", "text": "no", "vector": [0, 1, 0, 0]}]),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("insufficient_scope")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().expect("message").contains("write"));
    let (status, body) = call(addr, "POST", "/v1/plugins/p/enable", Some(&alice_rw), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("insufficient_scope")),
        "{body}"
    );
    let (status, body) = call(addr, "GET", "/v1/documents/a2", Some(&alice_read), None);
    assert_eq!(status, 404, "the refused write left nothing: {body}");

    // Every way a token can be wrong.
    let mut expired = claims("alice", "read");
    expired["exp"] = json!(now() - 120);
    refused(addr, &sign(Algorithm::HS256, &kid, &hmac, &expired), "expired");
    let mut early = claims("alice", "read");
    early["nbf"] = json!(now() + 300);
    refused(addr, &sign(Algorithm::HS256, &kid, &hmac, &early), "not valid yet");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
        URL_SAFE_NO_PAD.encode(claims("alice", "read write").to_string())
    );
    refused(addr, &unsigned, "HS256");
    refused(
        addr,
        &sign(Algorithm::HS512, &kid, &hmac, &claims("alice", "read")),
        "HS256",
    );
    refused(
        addr,
        &sign(
            Algorithm::HS256,
            &kid,
            b"some other key of thirty-two b..",
            &claims("alice", "read"),
        ),
        "signature",
    );
    refused(
        addr,
        &sign(Algorithm::HS256, "0123456789abcdef", &hmac, &claims("alice", "read")),
        "signing key",
    );
    refused(
        addr,
        &sign(Algorithm::HS256, &kid, &hmac, &claims("../bob", "read")),
        "tenant",
    );
    refused(
        addr,
        &sign(Algorithm::HS256, &kid, &hmac, &claims("alice", "read admin")),
        "scope",
    );
    let mut forever = claims("alice", "read");
    forever["exp"] = json!(now() + 400 * 24 * 3600);
    refused(addr, &sign(Algorithm::HS256, &kid, &hmac, &forever), "longest allowed");
    let mut no_expiry = claims("alice", "read");
    no_expiry.as_object_mut().expect("object").remove("exp");
    refused(addr, &sign(Algorithm::HS256, &kid, &hmac, &no_expiry), "exp");
    // A header that is not JSON; one without `alg` names no algorithm, so not HS256.
    refused(addr, "eyJub3QiOiJqc29uIg.e30.x", "well-formed");
    refused(addr, "eyJub3QiOiJqc29uIn0.e30.x", "HS256");
    refused(addr, "not-a-token-nor-a-key", "the key is not valid");

    // Rotation with an overlap: tokens of the old key work until it is revoked.
    let (new_id, new_secret) = new_signing_key(addr);
    let (new_kid, new_hmac) = parse_secret(&new_secret);
    let newer = sign(Algorithm::HS256, &new_kid, &new_hmac, &claims("alice", "read"));
    assert_eq!(search(addr, &alice_read).0, 200, "the old key still works");
    assert_eq!(search(addr, &newer).0, 200);
    let (status, body) = call(
        addr,
        "DELETE",
        &format!("/v1/admin/signing-keys/{key_id}"),
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked_at"].is_u64());
    refused(addr, &alice_read, "revoked");
    assert_eq!(search(addr, &newer).0, 200);
    assert_eq!(
        call(addr, "DELETE", "/v1/admin/signing-keys/nope", Some(ADMIN), None).0,
        404
    );

    let (_, metrics) = call(addr, "GET", "/metrics", None, None);
    let metrics = metrics.as_str().expect("text").to_owned();
    let count = |reason: &str| -> u64 {
        let prefix = format!("tvs_auth_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    };
    assert!(count("token") >= 12 && count("scope") == 2, "{metrics}");
    let (_, spec) = call(addr, "GET", "/openapi.json", None, None);
    assert!(spec["paths"]["/v1/admin/signing-keys"]["post"].is_object());
    assert!(spec["paths"]["/v1/admin/signing-keys/{id}"]["delete"].is_object());

    // Signing keys, and their revocations, outlive the server.
    drop(server);
    let server = Server::start(tmp.path(), &[], &[]);
    assert_eq!(search(server.addr, &newer).0, 200);
    refused(server.addr, &alice_read, "revoked");
    let (_, listed) = call(server.addr, "GET", "/v1/admin/signing-keys", Some(ADMIN), None);
    assert_eq!(listed["signing_keys"][1]["id"], new_id.as_str());
}
