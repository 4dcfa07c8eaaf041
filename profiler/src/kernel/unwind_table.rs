//! Compiles an object's DWARF call-frame information (`.eh_frame`, `.debug_frame`) into the
//! flat, sorted [`UnwindRow`]s the in-kernel unwinder binary-searches (x86-64).
//!
//! Each CFI row becomes one rule: where the CFA is (`rsp` or `rbp` plus an offset, or the PLT
//! expression), where the caller's `rbp` was saved, or that the frame is the outermost one.
//! Anything else (other registers, other expressions) becomes a `NONE` row, which the unwinder
//! walks by frame pointer.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Object as _, ObjectSection as _};
use profiler_common::{UnwindRow, unwind_kind};

/// Slice reader over the object's bytes.
type Slice<'a> = gimli::EndianSlice<'a, LittleEndian>;

/// One rule over `[start, end)` of an FDE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    rule: UnwindRow,
}

/// Why an object has no unwind table (it is then walked by frame pointers).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Not an ELF object.
    #[error("not an object file")]
    NotObject(#[source] object::Error),
    /// Tables are compiled for x86-64 only.
    #[error("unwind tables are compiled for x86-64 only")]
    Architecture,
    /// A frame section could not be read.
    #[error("{0} unreadable")]
    Section(&'static str, #[source] object::Error),
    /// A compressed frame section that could not be decompressed (another format than zlib,
    /// corrupt, or larger than [`MAX_DECOMPRESSED_BYTES`]).
    #[error("{0} compressed in a way not read")]
    Compressed(&'static str),
    /// A frame section could not be parsed.
    #[error("reading {0}")]
    Frames(&'static str, #[source] gimli::Error),
    /// Neither `.eh_frame` nor `.debug_frame`.
    #[error("no call-frame information")]
    NoFrames,
    /// The file could not be read again after its headers (or is larger than objects may be).
    #[error("unreadable")]
    Unreadable,
    /// Code above what the 32-bit row addresses cover.
    #[error("address {0:#x} above 4 GiB")]
    HighAddress(u64),
    /// More rules than the unwinder searches in one object: not worth building (24 bytes a
    /// rule while building; a hostile 2 GiB object could describe 2 G of them).
    #[error("more than {} call-frame rules", profiler_common::MAX_OBJECT_ROWS)]
    TooManyRules,
}

/// Unwind rows of one object, sorted by address, consecutive rows differing in their rule.
pub fn compile(elf: &[u8]) -> Result<Vec<UnwindRow>, CompileError> {
    let file = object::File::parse(elf).map_err(CompileError::NotObject)?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(CompileError::Architecture);
    }
    let mut spans = Vec::new();
    // `.eh_frame` first: where both describe an address, its rule wins (kept on ties below).
    if let Some(section) = file.section_by_name(".eh_frame") {
        let data = section
            .data()
            .map_err(|source| CompileError::Section(".eh_frame", source))?;
        let mut bases = BaseAddresses::default().set_eh_frame(section.address());
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        let eh_frame = EhFrame::new(data, LittleEndian);
        collect_spans(&eh_frame, &bases, &mut spans)
            .map_err(|source| CompileError::Frames(".eh_frame", source))?
            .ok_or(CompileError::TooManyRules)?;
    }
    // `.debug_frame` adds to `.eh_frame`: when it cannot be read (zstd, damaged), the
    // `.eh_frame` rows still serve.
    let debug_frame_data = match file.section_by_name(".debug_frame") {
        Some(section) => match section_bytes(&section, ".debug_frame") {
            Ok(data) => Some(data),
            Err(err) if !spans.is_empty() => {
                log::debug!("{err}: .eh_frame alone");
                None
            }
            Err(err) => return Err(err),
        },
        None => None,
    };
    if let Some(data) = debug_frame_data {
        let mut debug_frame = DebugFrame::new(&data, LittleEndian);
        debug_frame.set_address_size(8);
        collect_spans(&debug_frame, &BaseAddresses::default(), &mut spans)
            .map_err(|source| CompileError::Frames(".debug_frame", source))?
            .ok_or(CompileError::TooManyRules)?;
    }
    if spans.is_empty() {
        return Err(CompileError::NoFrames);
    }
    rows_of(spans)
}

/// Largest decompressed frame section: bounds what a hostile object's compressed section can
/// cost (a 100 MB program's `.debug_frame` is a few MB).
const MAX_DECOMPRESSED_BYTES: u64 = 256 << 20;

/// A section's bytes, decompressed when compressed: Go compresses its DWARF, `.debug_frame`
/// (its only call-frame information) included.
fn section_bytes<'a>(
    section: &object::Section<'a, '_>,
    name: &'static str,
) -> Result<std::borrow::Cow<'a, [u8]>, CompileError> {
    use std::io::Read as _;
    let compressed = section
        .compressed_data()
        .map_err(|source| CompileError::Section(name, source))?;
    match compressed.format {
        object::CompressionFormat::None => Ok(std::borrow::Cow::Borrowed(compressed.data)),
        object::CompressionFormat::Zlib
            if compressed.uncompressed_size <= MAX_DECOMPRESSED_BYTES =>
        {
            let size = compressed.uncompressed_size;
            let mut bytes = Vec::with_capacity(size as usize);
            flate2::read::ZlibDecoder::new(compressed.data)
                .take(size)
                .read_to_end(&mut bytes)
                .map_err(|_| CompileError::Compressed(name))?;
            Ok(std::borrow::Cow::Owned(bytes))
        }
        _ => Err(CompileError::Compressed(name)),
    }
}

/// Appends the rule spans of every FDE of `section`; FDEs it cannot parse are skipped. `None`
/// once there are more spans than an object may have rows.
fn collect_spans<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    spans: &mut Vec<Span>,
) -> gimli::Result<Option<()>> {
    let mut context = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        let Ok(mut table) = fde.rows(section, bases, &mut context) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            if row.start_address() >= row.end_address() {
                continue;
            }
            if spans.len() >= profiler_common::MAX_OBJECT_ROWS as usize {
                return Ok(None);
            }
            spans.push(Span {
                start: row.start_address(),
                end: row.end_address(),
                rule: rule_of(section, row),
            });
        }
    }
    Ok(Some(()))
}

/// The unwinder's rule for one CFI row.
fn rule_of<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> UnwindRow {
    let none = UnwindRow::default();
    // `None`: the ABI's default rule, which for x86-64 CIEs is never the return address's.
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                kind: unwind_kind::END,
                ..none
            };
        }
        // The psABI's return address slot, which the unwinder assumes.
        Some(RegisterRule::Offset(-8)) => {}
        _ => return none,
    }
    let (kind, cfa_offset, plt_threshold) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => unwind_kind::CFA_RSP,
                X86_64::RBP => unwind_kind::CFA_RBP,
                _ => return none,
            };
            (kind, *offset, 0)
        }
        CfaRule::Expression(expression) => {
            let Some((offset, threshold)) = expression
                .get(section)
                .ok()
                .and_then(|expression| plt_expression(expression.0.slice()))
            else {
                return none;
            };
            (unwind_kind::PLT, offset, threshold)
        }
    };
    // In 8-byte words; an offset that is not a whole slot is something else than the
    // compilers emit for x86-64, better walked by frame pointer.
    let words = |offset: i64| (offset % 8 == 0).then_some(offset / 8);
    let Some(cfa_offset) = words(cfa_offset).and_then(|words| i16::try_from(words).ok()) else {
        return none;
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        Some(RegisterRule::Offset(offset)) => {
            match words(offset).and_then(|words| i8::try_from(words).ok()) {
                Some(words) if words != 0 => words,
                _ => return none,
            }
        }
        // Not saved in this frame: the caller's value is still in the register.
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
        // Saved somewhere the unwinder cannot follow: the CFA is still right, and rbp only
        // matters to a caller whose CFA is rbp-based, which then falls back to frame
        // pointers on a wrong value at worst (the walk checks that frames move up).
        _ => 0,
    };
    UnwindRow {
        address: 0,
        cfa_offset,
        rbp_offset: if kind == unwind_kind::PLT {
            plt_threshold
        } else {
            rbp_offset
        },
        kind,
    }
}

/// Recognises the CFA expression linkers emit for `.plt` entries:
/// `rsp + offset + (((rip & 15) >= threshold) << 3)`. Returns (offset, threshold).
fn plt_expression(bytes: &[u8]) -> Option<(i64, i8)> {
    const DW_OP_BREG7: u8 = 0x77;
    const DW_OP_BREG16: u8 = 0x80;
    const DW_OP_LIT0: u8 = 0x30;
    // DW_OP_lit15, DW_OP_and, DW_OP_litN, DW_OP_ge, DW_OP_lit3, DW_OP_shl, DW_OP_plus
    let (&first, rest) = bytes.split_first()?;
    if first != DW_OP_BREG7 {
        return None;
    }
    // A one-byte SLEB128 offset, as every linker writes it.
    let (&offset, rest) = rest.split_first()?;
    if offset & 0x80 != 0 {
        return None;
    }
    let offset = i64::from(((offset << 1) as i8) >> 1);
    match rest {
        [DW_OP_BREG16, 0, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if (DW_OP_LIT0..=DW_OP_LIT0 + 31).contains(lit) =>
        {
            Some((offset, (lit - DW_OP_LIT0) as i8))
        }
        _ => None,
    }
}

/// Flattens rule spans into sorted rows: later-starting spans win where spans overlap, gaps
/// get a `NONE` row, consecutive equal rules merge.
fn rows_of(mut spans: Vec<Span>) -> Result<Vec<UnwindRow>, CompileError> {
    // Stable: of two spans starting at one address, the first collected (`.eh_frame`) wins.
    spans.sort_by_key(|span| span.start);
    spans.dedup_by_key(|span| span.start);
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(spans.len());
    let mut push = |address: u64, rule: UnwindRow| -> Result<(), CompileError> {
        let address = u32::try_from(address).map_err(|_| CompileError::HighAddress(address))?;
        let row = UnwindRow { address, ..rule };
        match rows.last_mut() {
            Some(last) if last.address == address => *last = row,
            Some(last) if UnwindRow { address, ..*last } == row => {}
            _ => rows.push(row),
        }
        Ok(())
    };
    for (index, span) in spans.iter().enumerate() {
        push(span.start, span.rule)?;
        let next_start = spans.get(index + 1).map(|next| next.start);
        if next_start.is_none_or(|next| next > span.end) {
            push(span.end, UnwindRow::default())?;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use object::ObjectSymbol as _;

    use super::*;

    /// An x86-64 ELF object whose `.eh_frame` has one FDE of `rules` one-byte
    /// `DW_CFA_advance_loc` steps: as many rows, from a file of about as many bytes.
    fn rule_bomb(rules: usize) -> Vec<u8> {
        let mut cie_body = vec![0, 0, 0, 0, 1, 0, 1, 0x78, 16, 0x0c, 7, 8, 0x90, 1];
        cie_body.resize((cie_body.len() + 4).next_multiple_of(8) - 4, 0);
        let mut eh_frame = (cie_body.len() as u32).to_le_bytes().to_vec();
        eh_frame.extend(&cie_body);
        let mut fde_body = 0x1000u64.to_le_bytes().to_vec();
        fde_body.extend((rules as u64 + 16).to_le_bytes());
        fde_body.resize(fde_body.len() + rules, 0x41);
        fde_body.resize((fde_body.len() + 8).next_multiple_of(8) - 8, 0);
        let cie_pointer = eh_frame.len() as u32 + 4;
        eh_frame.extend((fde_body.len() as u32 + 4).to_le_bytes());
        eh_frame.extend(cie_pointer.to_le_bytes());
        eh_frame.extend(&fde_body);
        eh_frame.extend([0; 4]);
        let names = b"\0.eh_frame\0.shstrtab\0";
        let names_at = 64 + eh_frame.len();
        let headers_at = (names_at + names.len()).next_multiple_of(8);
        let mut out = vec![0u8; headers_at + 3 * 64];
        out[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0");
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(16, &3u16.to_le_bytes());
        put(18, &62u16.to_le_bytes());
        put(20, &1u32.to_le_bytes());
        put(40, &(headers_at as u64).to_le_bytes());
        put(52, &64u16.to_le_bytes());
        put(54, &56u16.to_le_bytes());
        put(58, &64u16.to_le_bytes());
        put(60, &3u16.to_le_bytes());
        put(62, &2u16.to_le_bytes());
        put(64, &eh_frame);
        put(names_at, names);
        // Section headers: null, .eh_frame (address 0x800), the names.
        for (index, (name, kind, address, at, size)) in [
            (1u32, 1u32, 0x800u64, 64usize, eh_frame.len()),
            (11, 3, 0, names_at, names.len()),
        ]
        .into_iter()
        .enumerate()
        {
            let header = headers_at + 64 * (index + 1);
            put(header, &name.to_le_bytes());
            put(header + 4, &kind.to_le_bytes());
            put(header + 16, &address.to_le_bytes());
            put(header + 24, &(at as u64).to_le_bytes());
            put(header + 32, &(size as u64).to_le_bytes());
        }
        out
    }

    #[test]
    fn a_rule_bomb_stops_at_the_row_limit() {
        // A thousand rules compile; one more than an object may have stops the build early.
        assert!(compile(&rule_bomb(1000)).is_ok_and(|rows| !rows.is_empty()));
        let limit = profiler_common::MAX_OBJECT_ROWS as usize;
        assert!(matches!(
            compile(&rule_bomb(limit + 1)),
            Err(CompileError::TooManyRules)
        ));
    }

    /// An rsp-based rule, offsets in bytes.
    fn rsp(cfa_offset: i64, rbp_offset: i64) -> UnwindRow {
        UnwindRow {
            address: 0,
            cfa_offset: (cfa_offset / 8) as i16,
            rbp_offset: (rbp_offset / 8) as i8,
            kind: unwind_kind::CFA_RSP,
        }
    }

    /// The rule covering `address`.
    fn rule_at(rows: &[UnwindRow], address: u64) -> UnwindRow {
        let index = rows.partition_point(|row| u64::from(row.address) <= address);
        UnwindRow {
            address: 0,
            ..rows[index - 1]
        }
    }

    /// Assembles `source` (GNU as syntax, x86-64) into a shared object (linked, so that FDE
    /// addresses are final), its text at address 0x1000.
    fn assemble(name: &str, source: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join(format!("{name}.s"));
        let output = dir.path().join(format!("{name}.so"));
        std::fs::write(&input, source).unwrap();
        let status = Command::new("cc")
            .args(["-shared", "-nostdlib", "-Wl,-Ttext=0x1000", "-o"])
            .arg(&output)
            .arg(&input)
            .status()
            .expect("cc runs");
        assert!(status.success());
        std::fs::read(output).unwrap()
    }

    #[test]
    fn frame_pointer_prologue_rows() {
        // push rbp; mov rbp, rsp; ...; pop rbp; ret, with the CFI gcc writes for it.
        let object = assemble(
            "prologue",
            "\t.text\n\t.globl f\nf:\n\t.cfi_startproc\n\tpushq %rbp\n\t.cfi_def_cfa_offset 16\n\
             \t.cfi_offset %rbp, -16\n\tmovq %rsp, %rbp\n\t.cfi_def_cfa_register %rbp\n\
             \tnop\n\tpopq %rbp\n\t.cfi_def_cfa %rsp, 8\n\tret\n\t.cfi_endproc\n",
        );
        let rows = compile(&object).unwrap();
        let rbp = |cfa_offset| UnwindRow {
            kind: unwind_kind::CFA_RBP,
            ..rsp(cfa_offset, -16)
        };
        // f at 0x1000: push (1 byte), mov (3 bytes), nop (1), pop (1), ret (1).
        assert_eq!(rule_at(&rows, 0x1000), rsp(8, 0));
        assert_eq!(rule_at(&rows, 0x1001), rsp(16, -16));
        assert_eq!(rule_at(&rows, 0x1004), rbp(16));
        assert_eq!(rule_at(&rows, 0x1005), rbp(16));
        assert_eq!(rule_at(&rows, 0x1006), rsp(8, -16));
        // Past the function: no rule.
        assert_eq!(rule_at(&rows, 0x1007).kind, unwind_kind::NONE);
        assert!(
            rows.windows(2)
                .all(|pair| pair[0].address < pair[1].address)
        );
    }

    #[test]
    fn large_frames_keep_their_rule() {
        // A 36 KiB stack buffer: past an i16 of bytes, within an i16 of 8-byte words.
        let object = assemble(
            "large",
            "\t.text\n\t.globl g\ng:\n\t.cfi_startproc\n\tsubq $0x9000, %rsp\n\
             \t.cfi_def_cfa_offset 0x9008\n\tnop\n\taddq $0x9000, %rsp\n\
             \t.cfi_def_cfa_offset 8\n\tret\n\t.cfi_endproc\n",
        );
        let rows = compile(&object).unwrap();
        // sub (7 bytes) at 0x1000, nop at 0x1007.
        assert_eq!(rule_at(&rows, 0x1007), rsp(0x9008, 0));
    }

    #[test]
    fn undefined_return_address_marks_the_outermost_frame() {
        let object = assemble(
            "entry",
            "\t.text\n\t.globl _entry\n_entry:\n\t.cfi_startproc\n\t.cfi_undefined %rip\n\
             \txorl %ebp, %ebp\n\thlt\n\t.cfi_endproc\n",
        );
        let rows = compile(&object).unwrap();
        assert_eq!(rule_at(&rows, 0x1000).kind, unwind_kind::END);
    }

    #[test]
    fn plt_expression_is_recognised() {
        // rsp + 8 + (((rip & 15) >= 11) << 3)
        let bytes = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(plt_expression(&bytes), Some((8, 11)));
        assert_eq!(plt_expression(&bytes[..10]), None);
        assert_eq!(plt_expression(&[0x77, 0x10]), None);
    }

    #[test]
    fn linked_executable_has_plt_and_function_rows() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("plt.c");
        let output = dir.path().join("plt");
        std::fs::write(
            &source,
            "#include <stdio.h>\nint main(void) { puts(\"x\"); return 0; }\n",
        )
        .unwrap();
        let status = Command::new("cc")
            .args(["-O2", "-fno-plt", "-o"])
            .arg(&output)
            .arg(&source)
            .status()
            .expect("cc runs");
        assert!(status.success());
        let rows = compile(&std::fs::read(&output).unwrap()).unwrap();
        assert!(rows.iter().any(|row| row.kind == unwind_kind::CFA_RSP));
        assert!(
            rows.windows(2)
                .all(|pair| pair[0].address < pair[1].address)
        );
    }

    #[test]
    fn system_libc_table() {
        let path = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let Ok(bytes) = std::fs::read(path) else {
            eprintln!("skipping: no {}", path.display());
            return;
        };
        let rows = compile(&bytes).unwrap();
        assert!(rows.len() > 1000, "{} rows", rows.len());
        assert!(
            rows.windows(2)
                .all(|pair| pair[0].address < pair[1].address)
        );
        // clone3's child marks its return address undefined.
        assert!(rows.iter().any(|row| row.kind == unwind_kind::END));
        let file = object::File::parse(&*bytes).unwrap();
        let qsort = file
            .dynamic_symbols()
            .find(|symbol| symbol.name() == Ok("qsort"))
            .expect("libc exports qsort");
        // On entry, the return address is on top of the stack.
        assert_eq!(rule_at(&rows, qsort.address()), rsp(8, 0));
    }
}
