//! Starts the plugin's linear memory at 100 MiB (above the 64 MiB cap) without shipping 100 MiB.
fn main() {
    println!("cargo:rustc-link-arg=--initial-memory=104857600");
}
