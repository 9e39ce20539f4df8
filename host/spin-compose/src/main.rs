//! `tvs-spin-compose DIR OUT`: composes `tvs_spin_front.wasm`, `tvs_guest_handler.wasm` and
//! `tvs_spin_storage.wasm` from `DIR` (a `wasm32-wasip2/release` directory) into `OUT`, the
//! component `spin.toml` serves. Run by `spin build`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

fn read(dir: &Path, stem: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(format!("{stem}.wasm"));
    std::fs::read(&path).with_context(|| format!("reading {} (build it first, see spin.toml)", path.display()))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(out), None) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: tvs-spin-compose WASM_DIR OUT.wasm");
    };
    let dir = PathBuf::from(dir);
    let composed = tvs_spin_compose::compose(tvs_spin_compose::Parts {
        front: read(&dir, "tvs_spin_front")?,
        handler: read(&dir, "tvs_guest_handler")?,
        storage: read(&dir, "tvs_spin_storage")?,
    })?;
    let out = PathBuf::from(out);
    let tmp = out.with_extension("wasm.tmp");
    std::fs::write(&tmp, &composed).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("composed {} ({} bytes)", out.display(), composed.len());
    Ok(())
}
