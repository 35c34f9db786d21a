//! Builds the sandbox holder program (`src/engine/holder/program.rs`, std only) as a static
//! executable for the target, which the executor embeds and imports as the holder image:
//! no registry and no `docker build` are needed on the host.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/engine/holder/program.rs";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("hold");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let mut command = Command::new(rustc);
    command
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "hold",
            "--crate-type",
            "bin",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "strip=symbols", "-C", "target-feature=+crt-static"])
        .arg("-o")
        .arg(&out)
        .arg(source);
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace(['-', '.'], "_")
    );
    if let Ok(linker) = std::env::var(linker_var) {
        command.arg("-C").arg(format!("linker={linker}"));
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("could not run rustc to build the sandbox holder: {e}"));
    assert!(
        status.success(),
        "building the sandbox holder ({source}) as a static executable failed; it needs the \
         target's static C library (Debian: libc6-dev)"
    );
}
