//! A re-ranker plugin: among the hits of a search, recent documents move up.
//!
//! Each hit's distance (lower is closer) is shrunk by up to half according to how recent its
//! `year` metadata is among the hits (the newest year gets the full boost, hits without a year
//! none); the hits come back ordered by that adjusted distance. Search with
//! `{"query": "...", "rerank": "recency"}` after uploading it as `recency`.

wit_bindgen::generate!({
    path: "../../../wit/plugin",
    world: "tvs:plugin/reranker",
    generate_all,
});

use exports::tvs::plugin::rerank::Guest;
use tvs::plugin::log::{Level, write};
use tvs::store::types::Hit;

struct Recency;

/// The share of a distance the newest document sheds.
const MAX_BOOST: f32 = 0.5;

fn year_of(hit: &Hit) -> Option<f64> {
    let metadata: serde_json::Value = serde_json::from_str(&hit.metadata).ok()?;
    metadata.get("year")?.as_f64()
}

impl Guest for Recency {
    fn rerank(query: Option<String>, hits: Vec<Hit>) -> Result<Vec<Hit>, String> {
        let years: Vec<Option<f64>> = hits.iter().map(year_of).collect();
        let known = years.iter().flatten();
        let (oldest, newest) = known.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(*y), hi.max(*y)));
        let span = (newest - oldest).max(1.0);
        let mut ranked: Vec<(f32, Hit)> = hits
            .into_iter()
            .zip(years)
            .map(|(hit, year)| {
                let recency = year.map_or(0.0, |y| ((y - oldest) / span) as f32);
                (hit.distance * (1.0 - MAX_BOOST * recency), hit)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        write(
            Level::Debug,
            &format!("re-ranked {} hits for {:?} by recency", ranked.len(), query.unwrap_or_default()),
        );
        Ok(ranked.into_iter().map(|(_, hit)| hit).collect())
    }
}

export!(Recency);
