#!/usr/bin/env sh
# Builds tvs, ingests examples/corpus.jsonl (24 short texts on four topics, with 8-d vectors)
# into the tenant "demo" under ./user_data of the current directory, and searches it.
# Safe to re-run: ingest upserts by id.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin tvs
tvs="$repo/target/release/tvs"
"$tvs" tenant list | grep -qx demo || "$tvs" tenant create demo --dims 8 --model none
"$tvs" ingest --tenant demo "$repo/examples/corpus.jsonl"
echo "--- the 3 documents nearest to a 'space' vector:"
"$tvs" search --tenant demo --vector '[1,0,0,0,0.5,0,0,0]' -k 3
echo "--- the same query, only music documents with n >= 3:"
"$tvs" search --tenant demo --vector '[1,0,0,0,0.5,0,0,0]' -k 2 --filter '{"topic": "music", "n": {"$gte": 3}}'
echo "--- stats:"
"$tvs" stats --tenant demo
