//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! A missing object is not a build error, so that `cargo test` and
//! `cargo clippy` work without the eBPF toolchain: the library then embeds an
//! empty object and says so at run time (see `datapath::OBJECT`).
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest.join("../../target/ebpf/sluice.bpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("sluice.bpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found: run `cargo xtask build-ebpf`; \
                 this agent build cannot load the datapath",
                object.display()
            );
            fs::write(&out, b"").unwrap();
        }
    }
}
