//! A `function` plugin that does, on request, what a tenant's plugin may do and what it must
//! not get away with; see ../../README.md. The request is `{"op": "...", ...}`.

wit_bindgen::generate!({
    path: "../../../wit/plugin",
    world: "tvs:plugin/function",
    generate_all,
});

use tvs::plugin::log::{Level, write};
use tvs::store::collection;

struct Probe;

fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if depth == u64::MAX { frame[0] } else { recurse(depth + 1) + frame[1] }
}

impl Guest for Probe {
    fn handle(request: String) -> Result<String, String> {
        let request: serde_json::Value = serde_json::from_str(&request).map_err(|e| format!("not JSON: {e}"))?;
        match request["op"].as_str().unwrap_or("") {
            "echo" => Ok(request["value"].to_string()),
            "count" => Ok(serde_json::json!({"count": collection::count()}).to_string()),
            "search" => {
                let vector: Vec<f32> = serde_json::from_value(request["vector"].clone()).map_err(|e| e.to_string())?;
                let k = request["k"].as_u64().unwrap_or(3) as u32;
                let hits = collection::search(&vector, k, None, false).map_err(|e| format!("{e:?}"))?;
                let ids: Vec<String> = hits.into_iter().map(|h| h.id).collect();
                Ok(serde_json::json!({"ids": ids}).to_string())
            }
            "fail" => Err("the probe refuses this request".into()),
            "log" => {
                write(Level::Info, "hello from the probe");
                println!("printed to stdout");
                eprintln!("printed to stderr");
                Ok("{}".into())
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Ok(recurse(0).to_string()),
            "big" => {
                let bytes = request["bytes"].as_u64().unwrap_or(200 << 20) as usize;
                Ok("x".repeat(bytes))
            }
            "log-flood" => {
                for i in 0..1_000_000u32 {
                    write(Level::Debug, &format!("line {i} of a flood"));
                }
                Ok("{}".into())
            }
            "host-flood" => {
                let mut total = 0;
                for _ in 0..1_000_000u32 {
                    total += collection::count();
                }
                Ok(total.to_string())
            }
            "huge-k" => {
                let vector: Vec<f32> = serde_json::from_value(request["vector"].clone()).map_err(|e| e.to_string())?;
                match collection::search(&vector, 1_000_000_000, None, false) {
                    Ok(hits) => Ok(hits.len().to_string()),
                    Err(e) => Err(format!("the store said: {e:?}")),
                }
            }
            "panic" => panic!("the probe panics"),
            "passwd" => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => Ok(serde_json::json!({"read": text.len()}).to_string()),
                Err(e) => Err(format!("cannot read /etc/passwd: {e}")),
            },
            other => Err(format!("unknown op {other:?}")),
        }
    }
}

export!(Probe);
