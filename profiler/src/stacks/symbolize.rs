//! Turning addresses into frames with blazesym.

use std::collections::HashMap;

use blazesym::symbolize::{
    CodeInfo, Input, Sym, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use crate::{
    model::{Frame, FrameKind, JIT_MODULE, ObjectInfo},
    stacks::{
        address_space::{AddressSpaces, Location, ObjectId},
        python_names::PythonNames,
        stripped::{self, FunctionBounds},
    },
};

/// Resolves addresses to frames; implemented by [`Blazesym`] and by test doubles.
pub trait Symbols {
    /// For each user address of `pid`, its frames outermost first (the function containing
    /// the address, then the calls inlined into it at that point).
    fn user(&mut self, pid: u32, addresses: &[u64]) -> Vec<Vec<Frame>>;
    /// The same for kernel addresses.
    fn kernel(&mut self, addresses: &[u64]) -> Vec<Vec<Frame>>;
    /// The frame of a Python entry of a stack of `pid` (see [`crate::stacks::python`]).
    fn python(&mut self, pid: u32, entry: u64) -> Frame {
        PythonNames::default().frame(pid, entry)
    }
    /// The file name of the object `pid`'s Python interpreter is in, if it runs one.
    fn python_interpreter(&self, _pid: u32) -> Option<String> {
        None
    }
    /// Whether the interpreter's frames stay among Python frames.
    fn keep_interpreter_frames(&self) -> bool {
        false
    }
}

/// [`Symbols`] backed by blazesym, the target's ELF/DWARF files and kallsyms.
pub struct Blazesym<'a> {
    symbolizer: Symbolizer,
    spaces: &'a AddressSpaces,
    /// Function bounds of objects with code no symbol covers, read when first needed.
    bounds: HashMap<ObjectId, FunctionBounds>,
    /// Objects frames were symbolized in.
    used: std::collections::BTreeSet<ObjectId>,
}

/// What symbolizing learns that the next profile of the same address spaces can use (the
/// agent's windows): the objects and kernel symbols blazesym parsed, function bounds.
pub struct SymbolCache {
    symbolizer: Symbolizer,
    bounds: HashMap<ObjectId, FunctionBounds>,
}

impl SymbolCache {
    /// Nothing parsed yet.
    pub fn new() -> Self {
        SymbolCache {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            bounds: HashMap::new(),
        }
    }
}

impl Default for SymbolCache {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Blazesym<'a> {
    /// A symbolizer reading the objects recorded in `spaces`.
    pub fn new(spaces: &'a AddressSpaces) -> Self {
        Self::with_cache(spaces, SymbolCache::new())
    }

    /// A symbolizer starting from what an earlier one of the same `spaces` learnt.
    pub fn with_cache(spaces: &'a AddressSpaces, cache: SymbolCache) -> Self {
        Blazesym {
            symbolizer: cache.symbolizer,
            spaces,
            bounds: cache.bounds,
            used: Default::default(),
        }
    }

    /// What it learnt, for the next one.
    pub fn into_cache(self) -> SymbolCache {
        SymbolCache {
            symbolizer: self.symbolizer,
            bounds: self.bounds,
        }
    }

    /// The objects frames were symbolized in, by module name: build-ids, and the entry point
    /// of those with code no symbol covers.
    pub fn objects(&self) -> std::collections::BTreeMap<String, ObjectInfo> {
        let mut objects = std::collections::BTreeMap::new();
        for &id in &self.used {
            let object = &self.spaces.objects()[id];
            let build_id = object
                .held_path()
                .and_then(|path| blazesym::helper::read_elf_build_id(&path).ok())
                .flatten()
                .map(|id| id.iter().map(|byte| format!("{byte:02x}")).collect());
            let bounds = self.bounds.get(&id);
            let info = ObjectInfo {
                path: object.path.clone(),
                build_id,
                entry_offset: bounds.and_then(FunctionBounds::entry_point),
                segments: bounds.map(|b| b.segments.clone()).unwrap_or_default(),
            };
            // Frames name their object by file name: two files of one name (a container's
            // libc and the host's) cannot be told apart in the profile, so neither is
            // described rather than one wrongly.
            match objects.entry(object.name().to_owned()) {
                std::collections::btree_map::Entry::Vacant(vacant) => {
                    vacant.insert(info);
                }
                std::collections::btree_map::Entry::Occupied(mut occupied)
                    if occupied.get().build_id != info.build_id =>
                {
                    log::info!(
                        "two objects named {}: their build-ids are left out of the profile",
                        object.name()
                    );
                    *occupied.get_mut() = ObjectInfo::default();
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
        objects
    }
}

/// The function bounds of `object` (its call-frame information), read once.
fn bounds_of<'b>(
    bounds: &'b mut HashMap<ObjectId, FunctionBounds>,
    spaces: &AddressSpaces,
    object: ObjectId,
) -> &'b FunctionBounds {
    bounds.entry(object).or_insert_with(|| {
        // Through the descriptor held since the mapping was seen, not the path: whoever owns
        // its folder may have put anything there since.
        spaces.objects()[object]
            .held_path()
            .and_then(|path| std::fs::File::open(path).ok())
            .and_then(|mut file| crate::target::procfs::read_object(&mut file))
            .map_or_else(FunctionBounds::default, |bytes| {
                FunctionBounds::read(&bytes)
            })
    })
}

impl Symbols for Blazesym<'_> {
    fn user(&mut self, pid: u32, addresses: &[u64]) -> Vec<Vec<Frame>> {
        let mut result = vec![Vec::new(); addresses.len()];
        // Batch by object file: one blazesym call per file.
        let mut by_object: HashMap<usize, Vec<(usize, u64)>> = HashMap::new();
        for (index, &address) in addresses.iter().enumerate() {
            match self.spaces.locate(pid, address) {
                Location::File {
                    object,
                    file_offset,
                } => by_object
                    .entry(object)
                    .or_default()
                    .push((index, file_offset)),
                Location::Anonymous(name) => {
                    result[index] = vec![anonymous_frame(
                        name,
                        address,
                        self.spaces.jit().lookup(pid, address),
                    )]
                }
                Location::Unmapped => result[index] = vec![unknown_frame("[unknown]", None)],
            }
        }
        for (object_id, wanted) in by_object {
            let object = &self.spaces.objects()[object_id];
            let module = object.name().to_owned();
            let offsets: Vec<u64> = wanted.iter().map(|&(_, offset)| offset).collect();
            // Through the descriptor held since the mapping was seen, never a path of the
            // target's (see `address_space`), and its DWARF only where that is safe.
            let symbolized = object.held_path().and_then(|path| {
                let mut elf = Elf::new(path);
                elf.debug_syms = object.dwarf_is_safe();
                self.symbolizer
                    .symbolize(&Source::Elf(elf), Input::FileOffset(&offsets))
                    .ok()
            });
            self.used.insert(object_id);
            for (position, &(index, offset)) in wanted.iter().enumerate() {
                result[index] = match symbolized.as_ref().and_then(|s| s.get(position)) {
                    Some(Symbolized::Sym(sym)) => sym_frames(sym, Some(&module), FrameKind::User),
                    _ if module.starts_with('[') => vec![unknown_frame(&module, Some(&module))],
                    _ => {
                        let entry = bounds_of(&mut self.bounds, self.spaces, object_id)
                            .entry_of(offset)
                            .unwrap_or(offset);
                        let mut frame =
                            unknown_frame(&stripped::name(&module, entry), Some(&module));
                        frame.kind = FrameKind::Unsymbolized {
                            kernel: false,
                            file_offset: Some(entry),
                        };
                        vec![frame]
                    }
                };
            }
        }
        result
    }

    fn python(&mut self, pid: u32, entry: u64) -> Frame {
        self.spaces.python().frame(pid, entry)
    }

    fn keep_interpreter_frames(&self) -> bool {
        self.spaces.python().keep_interpreter_frames
    }

    fn python_interpreter(&self, pid: u32) -> Option<String> {
        self.spaces
            .python()
            .interpreter(pid)
            .map(|interpreter| interpreter.object.clone())
    }

    fn kernel(&mut self, addresses: &[u64]) -> Vec<Vec<Frame>> {
        let kernel = Kernel {
            // kallsyms is always there and fast; looking for a vmlinux image is slow and
            // rarely fruitful on production machines.
            vmlinux: blazesym::MaybeDefault::None,
            ..Default::default()
        };
        let symbolized = self
            .symbolizer
            .symbolize(&Source::Kernel(kernel), Input::AbsAddr(addresses));
        (0..addresses.len())
            .map(
                |index| match symbolized.as_ref().ok().and_then(|s| s.get(index)) {
                    Some(Symbolized::Sym(sym)) => sym_frames(sym, None, FrameKind::Kernel),
                    _ => {
                        let mut frame = unknown_frame("[unknown]", Some("[kernel]"));
                        frame.kind = FrameKind::Unsymbolized {
                            kernel: true,
                            file_offset: None,
                        };
                        vec![frame]
                    }
                },
            )
            .collect()
    }
}

fn unknown_frame(name: &str, module: Option<&str>) -> Frame {
    Frame {
        function: name.to_owned(),
        module: module.map(str::to_owned),
        file: None,
        line: None,
        kind: FrameKind::Unsymbolized {
            kernel: false,
            file_offset: None,
        },
    }
}

/// A frame in executable memory without a file: named by the runtime's perf map when it has
/// the address, else the mapping's name (`[vdso]`) or, for unnamed memory (JIT code), the
/// address, so distinct code stays distinct and no frame is nameless.
fn anonymous_frame(mapping: &str, address: u64, jit_name: Option<&str>) -> Frame {
    match jit_name {
        Some(name) => {
            let (function, file, line) = match v8_function(name) {
                Some((function, file, line)) => (function, Some(file.to_owned()), Some(line)),
                None => (name, None, None),
            };
            Frame {
                function: function.to_owned(),
                module: Some(JIT_MODULE.to_owned()),
                file,
                line,
                kind: FrameKind::Jit,
            }
        }
        None if mapping.is_empty() || mapping.starts_with("[anon") => {
            unknown_frame(&format!("{JIT_MODULE} {address:#x}"), Some(JIT_MODULE))
        }
        None => unknown_frame(mapping, Some(mapping)),
    }
}

/// V8 names its code `JS:<tier>name file:line:column`, the tier `~` (interpreted), `^`
/// (baseline) or `+`/`*` (optimized): one frame per function whatever its tier, with its place
/// in the source. `None` for other runtimes' names.
fn v8_function(name: &str) -> Option<(&str, &str, u32)> {
    let rest = ["JS:", "LazyCompile:", "Function:"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let rest = rest.trim_start_matches(['~', '^', '+', '*', '-']);
    let (function, place) = rest.rsplit_once(' ')?;
    let mut parts = place.rsplitn(3, ':');
    let _column = parts.next()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next().filter(|file| !file.is_empty())?;
    let function = match function.trim() {
        "" => "(anonymous)",
        function => function,
    };
    Some((function, file, line))
}

fn code_location(info: Option<&CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match info {
        Some(info) => (Some(info.to_path().display().to_string()), info.line),
        None => (None, None),
    }
}

/// Frames of one symbol: the function, then each inlined call, outermost first.
fn sym_frames(sym: &Sym<'_>, module: Option<&str>, kind: FrameKind) -> Vec<Frame> {
    let module = module
        .map(str::to_owned)
        .or_else(|| {
            sym.module
                .as_ref()
                .map(|m| m.to_string_lossy().into_owned())
        })
        .or_else(|| (kind == FrameKind::Kernel).then(|| "[kernel]".to_owned()));
    let (file, line) = code_location(sym.code_info.as_deref());
    let mut frames = vec![Frame {
        function: sym.name.to_string(),
        module: module.clone(),
        file,
        line,
        kind,
    }];
    for inlined in &sym.inlined {
        let (file, line) = code_location(inlined.code_info.as_ref());
        frames.push(Frame {
            function: inlined.name.to_string(),
            module: module.clone(),
            file,
            line,
            // Kernel frames have no inlined kind: their folded label is the same either way.
            kind: if kind == FrameKind::User {
                FrameKind::Inlined
            } else {
                kind
            },
        });
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_distinct_name() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn symbolizes_own_function_through_address_spaces() {
        let mut spaces = AddressSpaces::default();
        let pid = std::process::id();
        spaces.refresh(pid).unwrap();
        assert_eq!(a_function_with_a_distinct_name(), 7);
        let address = a_function_with_a_distinct_name as *const () as u64;
        let mut symbols = Blazesym::new(&spaces);
        let frames = symbols.user(pid, &[address, 8]);
        let names: Vec<&str> = frames[0].iter().map(|f| f.function.as_str()).collect();
        assert!(
            names
                .iter()
                .any(|name| name.ends_with("a_function_with_a_distinct_name")),
            "{names:?}"
        );
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            frames[0][0].module.as_deref(),
            exe.file_name().and_then(|n| n.to_str())
        );
        assert_eq!(frames[1][0].function, "[unknown]");
        assert!(frames[1][0].kind.is_unnamed());
    }

    #[test]
    fn anonymous_code_is_named_by_the_runtime_or_by_address() {
        let named = anonymous_frame("", 0x7f00_0000_1000, Some("void Hot.hotA()"));
        assert_eq!(named.function, "void Hot.hotA()");
        assert_eq!(named.kind, FrameKind::Jit);
        let unnamed = anonymous_frame("", 0x7f00_0000_1000, None);
        assert_eq!(unnamed.function, "[jit] 0x7f0000001000");
        assert!(unnamed.kind.is_unnamed());
        let v8 = anonymous_frame("", 0x1000, Some("JS:*hotA /srv/app/hot.js:2:14"));
        assert_eq!(v8.function, "hotA");
        assert_eq!(v8.file.as_deref(), Some("/srv/app/hot.js"));
        assert_eq!(v8.line, Some(2));
        let tiers = [
            "JS:~hotA /srv/app/hot.js:2:14",
            "JS:^hotA /srv/app/hot.js:2:14",
        ];
        assert!(
            tiers
                .iter()
                .all(|name| v8_function(name).map(|f| f.0) == Some("hotA"))
        );
        assert_eq!(
            v8_function("JS:~ node:internal/main/run_main_module:1:1"),
            Some(("(anonymous)", "node:internal/main/run_main_module", 1))
        );
        assert_eq!(v8_function("void Hot.hotA()"), None);
        let vsyscall = anonymous_frame("[vsyscall]", 0xffff_ffff_ff60_0000, None);
        assert_eq!(vsyscall.function, "[vsyscall]");
    }

    #[test]
    fn symbolizes_vdso_functions() {
        let pid = std::process::id();
        let maps =
            crate::target::procfs::parse_maps(&crate::target::procfs::read_maps(pid).unwrap());
        let Some(vdso) = maps.iter().find(|entry| entry.path == "[vdso]") else {
            return; // No vDSO on this kernel: nothing to symbolize.
        };
        // SAFETY: getauxval has no preconditions.
        let image = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        assert_eq!(image, vdso.start);
        let mut spaces = AddressSpaces::default();
        spaces.refresh(pid).unwrap();
        let mut symbols = Blazesym::new(&spaces);
        // Symbolize every address of the image's first page after the ELF header; some must be
        // named functions of the vDSO.
        let addresses: Vec<u64> = (vdso.start + 0x400..vdso.end).step_by(16).collect();
        let frames = symbols.user(pid, &addresses);
        assert!(
            frames
                .iter()
                .flatten()
                .any(|f| f.function.contains("clock_gettime")
                    && f.module.as_deref() == Some("[vdso]")),
            "no vDSO function found"
        );
    }

    #[test]
    fn symbolizes_kernel_addresses_from_kallsyms() {
        let Ok(kallsyms) = std::fs::read_to_string("/proc/kallsyms") else {
            return;
        };
        let Some(address) = kallsyms.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let name = fields.nth(1)?;
            (name == "schedule" && address != 0).then_some(address)
        }) else {
            // Addresses read as 0 without privileges: nothing to check.
            return;
        };
        let spaces = AddressSpaces::default();
        let frames = Blazesym::new(&spaces).kernel(&[address + 1]);
        assert_eq!(frames[0][0].function, "schedule");
        assert_eq!(frames[0][0].kind, FrameKind::Kernel);
    }
}
