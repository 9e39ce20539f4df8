//! The `tvs` binary: tenant commands, ingest with validation before any write, search output
//! and exit codes (0 ok, 1 nothing found, 2 error with the cause chain), the single-tenant
//! store at VECTOR_STORE_FOLDER, and environment values checked by name.

use std::fs;
use std::path::Path;

use crate::support::{stderr, stdout, tvs};

fn corpus() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/corpus.jsonl")
        .display()
        .to_string()
}

const SPACE_QUERY: &str = "[1,0,0,0,0.5,0,0,0]";

#[test]
fn tenant_create_list_delete_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for id in ["zeta", "alpha"] {
        let out = tvs(
            tmp.path(),
            &["tenant", "create", id, "--dims", "8", "--model", "none"],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(
        tmp.path().join("user_data/alpha/config/user_config.json").is_file(),
        "TVS_DATA_DIR defaults to ./user_data"
    );
    let list = tvs(tmp.path(), &["tenant", "list"], &[]);
    assert_eq!(stdout(&list), "alpha\nzeta\n");
    let page = tvs(tmp.path(), &["tenant", "list", "--after", "alpha", "--limit", "1"], &[]);
    assert_eq!(stdout(&page), "zeta\n");
    let del = tvs(tmp.path(), &["tenant", "delete", "zeta"], &[]);
    assert!(del.status.success(), "{}", stderr(&del));
    assert_eq!(stdout(&tvs(tmp.path(), &["tenant", "list"], &[])), "alpha\n");
    let again = tvs(tmp.path(), &["tenant", "delete", "zeta"], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("does not exist"), "{}", stderr(&again));
}

#[test]
fn a_hostile_tenant_id_exits_2_and_names_the_rule() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for id in ["../escape", "a/b", ".x"] {
        let out = tvs(tmp.path(), &["tenant", "create", id], &[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
            "{}",
            stderr(&out)
        );
    }
    assert!(
        fs::read_dir(tmp.path().join("user_data")).expect("ls").next().is_none(),
        "nothing was created"
    );
}

#[test]
fn ingest_then_search_finds_the_topic_and_a_filter_narrows_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(
        tvs(
            tmp.path(),
            &["tenant", "create", "demo", "--dims", "8", "--model", "none"],
            &[]
        )
        .status
        .success()
    );
    let ingest = tvs(tmp.path(), &["ingest", "--tenant", "demo", &corpus()], &[]);
    assert!(ingest.status.success(), "{}", stderr(&ingest));
    assert!(stderr(&ingest).contains("ingested 24 documents"), "{}", stderr(&ingest));
    // Re-ingesting upserts by id: no duplicates.
    assert!(
        tvs(tmp.path(), &["ingest", "--tenant", "demo", &corpus()], &[])
            .status
            .success()
    );

    let search = tvs(
        tmp.path(),
        &["search", "--tenant", "demo", "--vector", SPACE_QUERY, "-k", "3"],
        &[],
    );
    assert!(search.status.success(), "{}", stderr(&search));
    let hits: Vec<serde_json::Value> = stdout(&search)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h["metadata"]["topic"] == "space"), "{hits:?}");

    let filtered = tvs(
        tmp.path(),
        &[
            "search",
            "--tenant",
            "demo",
            "--vector",
            SPACE_QUERY,
            "-k",
            "2",
            "--filter",
            r#"{"topic": "music", "n": {"$gte": 5}}"#,
        ],
        &[],
    );
    let hits: Vec<serde_json::Value> = stdout(&filtered)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter()
            .all(|h| h["metadata"]["topic"] == "music" && h["metadata"]["n"].as_u64() >= Some(5))
    );

    let none = tvs(
        tmp.path(),
        &[
            "search",
            "--tenant",
            "demo",
            "--vector",
            SPACE_QUERY,
            "--filter",
            r#"{"topic": "gardening"}"#,
        ],
        &[],
    );
    assert_eq!(none.status.code(), Some(1), "no hits is exit 1");

    let stats = tvs(tmp.path(), &["stats", "--tenant", "demo"], &[]);
    let info: serde_json::Value = serde_json::from_str(&stdout(&stats)).expect("stats json");
    assert_eq!(info["count"], 24);
    assert_eq!(info["dims"], 8);
}

#[test]
fn a_bad_line_reports_file_and_line_and_nothing_is_ingested() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(
        tvs(
            tmp.path(),
            &["tenant", "create", "t", "--dims", "2", "--model", "none"],
            &[]
        )
        .status
        .success()
    );
    let file = tmp.path().join("bad.jsonl");
    for (body, needle) in [
        (
            "{\"id\":\"a\",\"vector\":[1,2]}\n{\"id\":\"b\",\"vector\":[1,2,3]}\n",
            "bad.jsonl:2",
        ),
        (
            "{\"id\":\"a\",\"vector\":[1,2]}\n\n{\"id\":\"b\",\"vector\":[1,\n",
            "bad.jsonl:3",
        ),
        ("{\"id\":\"a\",\"vector\":[1,2],\"colour\":1}\n", "bad.jsonl:1"),
    ] {
        fs::write(&file, body).expect("write");
        let out = tvs(
            tmp.path(),
            &["ingest", "--tenant", "t", file.to_str().expect("utf8")],
            &[],
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
        let stats: serde_json::Value =
            serde_json::from_str(&stdout(&tvs(tmp.path(), &["stats", "--tenant", "t"], &[]))).expect("json");
        assert_eq!(stats["count"], 0, "nothing before the bad line was applied either");
    }
}

#[test]
fn without_a_tenant_the_single_tenant_store_at_vector_store_folder_is_used() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = [("VECTOR_STORE_FOLDER", "legacy_store"), ("DEFAULT_TOP_K", "2")];
    let ingest = tvs(tmp.path(), &["ingest", &corpus()], &env);
    assert!(ingest.status.success(), "{}", stderr(&ingest));
    assert!(tmp.path().join("legacy_store/docs.jsonl").is_file());
    let search = tvs(tmp.path(), &["search", "--vector", SPACE_QUERY], &env);
    assert_eq!(stdout(&search).lines().count(), 2, "DEFAULT_TOP_K is honoured");
    let default_folder = tvs(tmp.path(), &["search", "--vector", SPACE_QUERY], &[]);
    assert_eq!(default_folder.status.code(), Some(2));
    assert!(
        stderr(&default_folder).contains("vector_store_data"),
        "{}",
        stderr(&default_folder)
    );
}

#[test]
fn a_bad_environment_value_exits_2_naming_the_variable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tvs(tmp.path(), &["tenant", "list"], &[("VECTOR_STORE_POOL_SIZE", "lots")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("VECTOR_STORE_POOL_SIZE"), "{}", stderr(&out));
}

#[test]
fn ingesting_into_a_missing_tenant_says_how_to_create_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tvs(tmp.path(), &["ingest", "--tenant", "ghost", &corpus()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("tvs tenant create"), "{}", stderr(&out));
    assert!(
        !tmp.path().join("user_data/ghost").exists(),
        "nothing was created for it"
    );
}

#[test]
fn a_config_file_sets_defaults_that_the_environment_overrides() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(
        tmp.path().join("tvs.toml"),
        "data_dir = \"custom_data\"\ndefault_top_k = 2\n",
    )
    .expect("config");
    let config = ["--config", "tvs.toml"];
    assert!(
        tvs(
            tmp.path(),
            &[
                &config[..],
                &["tenant", "create", "t", "--dims", "8", "--model", "none"]
            ]
            .concat(),
            &[]
        )
        .status
        .success()
    );
    assert!(
        tmp.path().join("custom_data/t").is_dir(),
        "data_dir comes from the file"
    );
    assert!(
        tvs(
            tmp.path(),
            &[&config[..], &["ingest", "--tenant", "t", &corpus()]].concat(),
            &[]
        )
        .status
        .success()
    );
    let search = [&config[..], &["search", "--tenant", "t", "--vector", SPACE_QUERY]].concat();
    assert_eq!(
        stdout(&tvs(tmp.path(), &search, &[])).lines().count(),
        2,
        "default_top_k from the file"
    );
    assert_eq!(
        stdout(&tvs(tmp.path(), &search, &[("DEFAULT_TOP_K", "3")]))
            .lines()
            .count(),
        3,
        "the environment wins"
    );
    fs::write(tmp.path().join("bad.toml"), "pool_sise = 4\n").expect("config");
    let bad = tvs(tmp.path(), &["--config", "bad.toml", "tenant", "list"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("pool_sise"), "{}", stderr(&bad));
}
