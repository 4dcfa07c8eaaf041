use which::which;

/// Rebuilds the programs when bpf-linker changes: cargo does not see the linker as an input.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
