//! Local embedding throughput: tvs's candle all-MiniLM-L6-v2 against Python
//! sentence-transformers (torch) on the same sentences, in the same run, in sentences per
//! second, best of three rounds.
//!
//! tvs rows come in two configurations: `tvs serve`'s (`RAYON_NUM_THREADS=1`, so candle runs
//! each request's matrix products on that request's thread) and candle's default (every
//! product split over all cores). Each is measured for one request alone and for two requests
//! at once, the server's aggregate on 2 cores.
//!
//! `TVS_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p tvs --bench embed`; without that
//! variable (a venv with sentence-transformers, which pulls in torch) the baseline column is
//! left empty and says how to fill it.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use tvs_embed::LocalEmbedder;

const SENTENCES: usize = 256;
const ROUNDS: usize = 3;

/// Best of `ROUNDS` (the least disturbed run on a shared machine), in sentences per second.
fn best_rate(texts: usize, mut run: impl FnMut()) -> f64 {
    run();
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            run();
            texts as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Sets how many threads candle splits a matrix product over.
fn candle_threads(threads: Option<&str>) {
    // SAFETY: the bench's own threads are joined whenever this runs, and the only other threads
    // (idle rayon workers) do not read the environment.
    #[allow(unsafe_code)]
    unsafe {
        match threads {
            Some(n) => std::env::set_var("RAYON_NUM_THREADS", n),
            None => std::env::remove_var("RAYON_NUM_THREADS"),
        }
    }
}

/// (one request alone, two requests at once), in sentences per second; requests run on their
/// own thread, or on the threads of `pool` when given.
fn measure(embedder: &LocalEmbedder, sentences: &[String], pool: Option<&rayon::ThreadPool>) -> (f64, f64) {
    let embed = |texts: &[String]| match pool {
        Some(pool) => embedder.embed_texts_in(pool, texts).unwrap(),
        None => embedder.embed_texts(texts).unwrap(),
    };
    let alone = best_rate(sentences.len(), || {
        embed(sentences);
    });
    let (left, right) = sentences.split_at(sentences.len() / 2);
    let together = best_rate(sentences.len(), || {
        std::thread::scope(|scope| {
            scope.spawn(|| embed(left));
            scope.spawn(|| embed(right));
        });
    });
    (alone, together)
}

fn sentence_transformers(model_dir: &Path, sentences: &[String]) -> Result<(f64, f64), String> {
    let python = std::env::var("TVS_BENCH_PYTHON")
        .map_err(|_| "set TVS_BENCH_PYTHON to a Python with sentence-transformers".to_owned())?;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sentences.json");
    std::fs::write(&path, serde_json::to_string(sentences).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/st_embed.py");
    let output = Command::new(python)
        .arg(script)
        .arg(model_dir)
        .arg(&path)
        .args(["32", &ROUNDS.to_string()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.lines().last().unwrap_or("failed").to_owned());
    }
    let rates: Vec<f64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| v["sentences_per_s"].as_f64())
        .collect();
    match rates[..] {
        [one, two] => Ok((one, two)),
        _ => Err(format!("unexpected output: {rates:?}")),
    }
}

fn main() {
    let model_dir = tvs_embed::model::model_dir();
    tvs_embed::model::ensure(&model_dir, &mut |line| println!("{line}")).unwrap();
    let embedder = LocalEmbedder::load(&model_dir).unwrap();
    let sentences = tvs_synth::sentences(SENTENCES, 7);
    let tokens = embedder.count_tokens_of(&sentences);
    println!(
        "{SENTENCES} sentences, {:.1} word pieces on average, batches of 32, 2 cores\n",
        tokens as f64 / SENTENCES as f64
    );

    candle_threads(Some("1"));
    let (serve_alone, serve_together) = measure(&embedder, &sentences, None);
    candle_threads(None);
    let all_cores = rayon::ThreadPoolBuilder::new().build().unwrap();
    let (default_alone, default_together) = measure(&embedder, &sentences, Some(&all_cores));
    let baseline = sentence_transformers(&model_dir, &sentences);

    let (st_one, st_two) = match &baseline {
        Ok((one, two)) => (Some(*one), Some(*two)),
        Err(_) => (None, None),
    };
    let row = |label: &str, tvs: f64, base: Option<f64>, base_label: &str| {
        let base_text = base.map_or("–".to_owned(), |b| format!("{b:.1} ({base_label})"));
        let ratio = base.map_or("–".to_owned(), |b| format!("{:.2}×", tvs / b));
        println!("{label:<48} {tvs:>8.1} {base_text:>26} {ratio:>7}");
    };
    println!(
        "{:<48} {:>8} {:>26} {:>7}",
        "sentences/s", "tvs", "sentence-transformers", "ratio"
    );
    row("tvs serve: 1 request (1 thread)", serve_alone, st_one, "1 thread");
    row(
        "tvs serve: 2 requests at once (1 thread each)",
        serve_together,
        st_two,
        "2 threads",
    );
    row(
        "candle default: 1 request (2 threads)",
        default_alone,
        st_two,
        "2 threads",
    );
    row(
        "candle default: 2 requests at once",
        default_together,
        st_two,
        "2 threads",
    );
    if let Err(why) = baseline {
        println!("\nno baseline: {why}");
    }
}
