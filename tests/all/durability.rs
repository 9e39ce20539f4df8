//! Every acknowledged write survives `kill -9`: a child process ingests (single documents and
//! batches, overwrites and deletes, from several threads sharing fsyncs, with snapshots and
//! compactions in between) and reports each acknowledgement; the parent kills it at a random
//! point, reopens the store and checks that each acknowledged operation is reflected, that the
//! only other changes come from the operations in flight, and that every document present is
//! whole and findable by search. Trials accumulate on one store, so later trials start from a
//! snapshot plus a log tail, and some kills land during compaction or a graph build.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tvs_store::config::Metric;
use tvs_store::store::{NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::StoreDir;
use tvs_synth::{EmbeddingLike, Rng};

const CHILD_ENV: &str = "TVS_TEST_CRASH_CHILD_DIR";
const DIMS: usize = 16;
const THREADS: u64 = 3;

/// The vector of a document version: a deterministic function of (id, version), shaped like a
/// real embedding (a 6-d clustered latent in 16-d), since i.i.d. Gaussian vectors are the
/// worst case for a graph index.
fn vector_of(id: &str, version: u64) -> Vec<f32> {
    let seed = id.bytes().fold(version.wrapping_mul(0x100_0000_01b3), |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    EmbeddingLike::with_shape(DIMS, 6, 16, 0.05, seed).next_vector()
}

fn text_of(id: &str, version: u64) -> String {
    format!("{id}@{version}")
}

/// The child: runs when the parent re-executes this test binary with `CHILD_ENV` set.
#[test]
#[ignore = "run by every_acknowledged_write_survives_kill_9 as a child process"]
fn crash_child_ingests_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let seed: u64 = std::env::var("TVS_TEST_CRASH_SEED")
        .expect("seed")
        .parse()
        .expect("number");
    let store = TenantStore::open(&StoreDir::new(dir)).expect("child opens the store");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |out: &Mutex<std::io::Stdout>, line: String| {
        let mut out = out.lock().expect("stdout");
        writeln!(out, "{line}").expect("parent reads");
        out.flush().expect("flush");
    };
    // Existing documents per thread, with their versions, so the child continues where the
    // last trial stopped.
    let existing: Vec<(String, u64)> = {
        let ids: Vec<String> = (0..THREADS)
            .flat_map(|t| (0..400).map(move |n| format!("t{t}-{n}")))
            .collect();
        store
            .get(&ids, false)
            .into_iter()
            .map(|d| {
                let version = d.text.rsplit('@').next().expect("@").parse().expect("version");
                (d.id, version)
            })
            .collect()
    };
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (store, out, existing) = (&store, out.clone(), &existing);
            scope.spawn(move || {
                let mut versions: HashMap<String, u64> = existing
                    .iter()
                    .filter(|(id, _)| id.starts_with(&format!("t{t}-")))
                    .cloned()
                    .collect();
                let mut rng = Rng::new(seed * 31 + t);
                let mut op = 0u64;
                loop {
                    op += 1;
                    let roll = rng.below(100);
                    let tag = format!("{t}.{op}");
                    if roll < 10 && !versions.is_empty() {
                        let id = versions
                            .keys()
                            .nth(rng.below(versions.len() as u64) as usize)
                            .expect("some")
                            .clone();
                        say(&out, format!("BEGIN {tag} D {id}"));
                        store.delete(std::slice::from_ref(&id)).expect("delete");
                        versions.remove(&id);
                        say(&out, format!("ACK {tag}"));
                    } else if roll < 12 && t == 0 {
                        say(&out, format!("BEGIN {tag} S"));
                        if rng.below(2) == 0 {
                            store.flush().expect("flush")
                        } else {
                            store.compact().expect("compact")
                        }
                        say(&out, format!("ACK {tag}"));
                    } else {
                        let batch = if roll < 30 { 1 + rng.below(40) } else { 1 };
                        let mut docs = Vec::new();
                        let mut desc = Vec::new();
                        for _ in 0..batch {
                            let id = format!("t{t}-{}", rng.below(400));
                            if docs.iter().any(|d: &NewDocument| d.id.as_deref() == Some(&id)) {
                                continue;
                            }
                            let version = versions.get(&id).map_or(1, |v| v + 1);
                            versions.insert(id.clone(), version);
                            desc.push(format!("{id}={version}"));
                            docs.push(NewDocument {
                                id: Some(id.clone()),
                                text: text_of(&id, version),
                                metadata: Default::default(),
                                vector: vector_of(&id, version),
                            });
                        }
                        say(&out, format!("BEGIN {tag} U {}", desc.join(" ")));
                        store.upsert(docs).expect("upsert");
                        say(&out, format!("ACK {tag}"));
                    }
                }
            });
        }
    });
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(Vec<(String, u64)>),
    Delete(String),
    Other,
}

fn parse_op(rest: &str) -> Op {
    let mut parts = rest.split(' ');
    match parts.next() {
        Some("U") => Op::Upsert(
            parts
                .map(|kv| {
                    let (id, v) = kv.split_once('=').expect("id=version");
                    (id.to_owned(), v.parse().expect("version"))
                })
                .collect(),
        ),
        Some("D") => Op::Delete(parts.next().expect("id").to_owned()),
        _ => Op::Other,
    }
}

/// Runs one child until it has acknowledged `kill_after` operations, then kills it with SIGKILL.
/// Returns the acknowledged operations in order and the operations still in flight.
fn run_child_and_kill(dir: &Path, seed: u64, kill_after: usize) -> (Vec<Op>, Vec<Op>) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "durability::crash_child_ingests_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env("TVS_TEST_CRASH_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut begun: BTreeMap<String, Op> = BTreeMap::new();
    let mut acked = Vec::new();
    let mut killed = false;
    while let Some(Ok(line)) = lines.next() {
        // libtest prints "test <name> ... " without a newline before the child's first line.
        if let Some(pos) = line.find("BEGIN ") {
            let (tag, op) = line[pos + 6..].split_once(' ').expect("tag op");
            begun.insert(tag.to_owned(), parse_op(op));
        } else if let Some(pos) = line.find("ACK ") {
            let tag = &line[pos + 4..];
            acked.push(begun.remove(tag).expect("ack of a begun op"));
        }
        if !killed && acked.len() >= kill_after {
            // SIGKILL through kill(1) keeps this crate free of unsafe code. The pipe is
            // drained afterwards: lines the child printed before dying still count.
            let status = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status()
                .expect("kill -9");
            assert!(status.success());
            killed = true;
        }
    }
    let status = child.wait().expect("wait");
    assert!(
        killed,
        "the child stopped by itself ({status}) before {kill_after} acknowledgements"
    );
    // Anything begun but not acknowledged may or may not have landed.
    (acked, begun.into_values().collect())
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StoreDir::new(tmp.path().join("store"));
    let mut cfg = crate::support::config(DIMS, Metric::L2);
    cfg.hnsw_threshold = 600;
    drop(TenantStore::create(&dir, &cfg).expect("create"));

    let mut model: HashMap<String, u64> = HashMap::new();
    let mut rng = Rng::new(2024);
    let trials = 24;
    for trial in 0..trials {
        let kill_after = 5 + rng.below(400) as usize;
        let (acked, in_flight) = run_child_and_kill(dir.root(), trial, kill_after);
        assert!(
            acked.len() >= kill_after.min(1),
            "trial {trial}: the child made progress"
        );
        // Acknowledged operations, in order, define the minimum state.
        for op in &acked {
            match op {
                Op::Upsert(docs) => docs.iter().for_each(|(id, v)| {
                    model.insert(id.clone(), *v);
                }),
                Op::Delete(id) => {
                    model.remove(id);
                }
                Op::Other => {}
            }
        }
        // Ids an in-flight operation touched may hold its result instead.
        let mut maybe: HashMap<String, Option<u64>> = HashMap::new();
        for op in &in_flight {
            match op {
                Op::Upsert(docs) => docs.iter().for_each(|(id, v)| {
                    maybe.insert(id.clone(), Some(*v));
                }),
                Op::Delete(id) => {
                    maybe.insert(id.clone(), None);
                }
                Op::Other => {}
            }
        }

        let store = TenantStore::open(&dir).unwrap_or_else(|e| panic!("trial {trial}: reopen after kill -9: {e:?}"));
        store.wait_for_index();
        let all_ids: Vec<String> = (0..THREADS)
            .flat_map(|t| (0..400).map(move |n| format!("t{t}-{n}")))
            .collect();
        let present: HashMap<String, tvs_store::store::Document> = store
            .get(&all_ids, true)
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let mut ids: HashSet<String> = model.keys().cloned().collect();
        ids.extend(present.keys().cloned());
        for id in &ids {
            let expected = model.get(id).copied();
            let found = present.get(id).map(|d| {
                let version: u64 = d.text.rsplit('@').next().expect("@").parse().expect("version");
                assert_eq!(
                    d.vector.as_deref(),
                    Some(&vector_of(id, version)[..]),
                    "trial {trial}: {id} is whole"
                );
                version
            });
            let allowed = found == expected || maybe.get(id).is_some_and(|m| *m == found);
            assert!(
                allowed,
                "trial {trial}: {id} is {found:?}, acknowledged {expected:?}, in flight {:?}",
                maybe.get(id)
            );
            // The model follows what is really there (in-flight results that landed).
            match found {
                Some(v) => model.insert(id.clone(), v),
                None => model.remove(id),
            };
        }
        assert_eq!(store.count(), model.len() as u64, "trial {trial}");
        for (id, version) in model.iter().take(60) {
            let hits = store
                .search(&SearchQuery {
                    vector: vector_of(id, *version),
                    k: 10,
                    ..Default::default()
                })
                .expect("search");
            assert!(
                hits.iter().any(|h| &h.id == id),
                "trial {trial}: {id} is findable by search ({:?})",
                store.info()
            );
        }
    }
}
