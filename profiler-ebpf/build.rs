use which::which;

/// Rebuilds the programs when bpf-linker changes: cargo does not see the linker as an input.
/// Also tells the programs which architecture's registers they read (`bpf_target_arch`).
fn main() -> aya_build::Result<()> {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
    aya_build::emit_bpf_target_arch_cfg()
}
