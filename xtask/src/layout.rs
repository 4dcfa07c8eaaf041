//! The shape of the code, checked with the lints: no module past its length limit, and no
//! import cycle between the modules of `profiler/src` (tests aside), so the layers of
//! docs/design.md stay layers.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use syn::visit::Visit;

/// Longest module, in lines, per crate source folder.
const LIMITS: [(&str, usize); 2] = [("profiler/src", 700), ("profiler-ebpf/src", 600)];

/// Checks module lengths and the import graph of `profiler/src`.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (folder, limit) in LIMITS {
        for file in rust_files(&root.join(folder))? {
            let lines = std::fs::read_to_string(&file)?.lines().count();
            if lines > limit {
                problems.push(format!(
                    "{} has {lines} lines (at most {limit}): split it by what it does",
                    file.strip_prefix(root).unwrap_or(&file).display()
                ));
            }
        }
    }
    let graph = import_graph(&root.join("profiler/src"))?;
    for cycle in cycles(&graph) {
        problems.push(format!("import cycle between {}", cycle.join(", ")));
    }
    if !problems.is_empty() {
        bail!("code layout:\n  {}", problems.join("\n  "));
    }
    println!("layout: {} modules, no cycle, none too long", graph.len());
    Ok(())
}

fn rust_files(folder: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).with_context(|| folder.display().to_string())? {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A module's path from its file: `collect/mod.rs` is `collect`, `lib.rs` the crate root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Module → modules it names (through `crate::`, `super::`, `self::` or a child module's
/// name), outside `#[cfg(test)]`. Paths to an ancestor are left out: a parent re-exporting
/// its children is the module tree, not a cycle.
fn import_graph(src: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let files = rust_files(src)?;
    let modules: BTreeSet<Vec<String>> = files.iter().map(|file| module_of(src, file)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file)?;
        let syntax = syn::parse_file(&text).with_context(|| file.display().to_string())?;
        let mut paths = Paths::default();
        paths.visit_file(&syntax);
        let mut targets = BTreeSet::new();
        for path in paths.found {
            let absolute = match path.first().map(String::as_str) {
                Some("crate") => path[1..].to_vec(),
                Some("super") => {
                    let mut base = module.clone();
                    let mut rest = &path[..];
                    while rest.first().is_some_and(|part| part == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend_from_slice(rest);
                    base
                }
                Some("self") => [&module[..], &path[1..]].concat(),
                Some(first) if modules.contains(&[&module[..], &[first.to_owned()]].concat()) => {
                    [&module[..], &path[..]].concat()
                }
                _ => continue,
            };
            // The longest prefix that is a module is what the path reaches.
            let target = (0..=absolute.len())
                .rev()
                .map(|len| absolute[..len].to_vec())
                .find(|prefix| modules.contains(prefix));
            if let Some(target) = target
                && !target.is_empty()
                && !module.starts_with(&target)
            {
                targets.insert(target.join("::"));
            }
        }
        graph.insert(module.join("::"), targets);
    }
    Ok(graph)
}

/// Paths of `use` trees and multi-segment paths, outside test code.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => self.push(prefix, Some(name.ident.to_string())),
            syn::UseTree::Rename(rename) => self.push(prefix, Some(rename.ident.to_string())),
            syn::UseTree::Glob(_) => self.push(prefix, None),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn push(&mut self, prefix: &[String], last: Option<String>) {
        let mut path = prefix.to_vec();
        path.extend(last.filter(|name| name != "self"));
        self.found.push(path);
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if !is_test(&item.attrs) {
            self.use_tree(&mut Vec::new(), &item.tree);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        if segments.len() > 1 {
            self.found.push(segments);
        }
        syn::visit::visit_path(self, path);
    }
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        for target in state.graph.get(node).into_iter().flatten() {
            let target = target.as_str();
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[node].min(state.low[target]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.low[node].min(state.index[target]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.to_owned());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cycles_and_only_cycles() {
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("model", vec![]),
            ("analysis", vec!["model"]),
            ("render", vec!["analysis", "model"]),
            ("kernel", vec!["collect"]),
            ("collect", vec!["kernel", "model"]),
        ]
        .into_iter()
        .map(|(node, targets)| {
            (
                node.to_owned(),
                targets.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
        assert_eq!(cycles(&graph), vec![vec!["collect", "kernel"]]);
    }

    #[test]
    fn use_trees_expand_to_module_paths() {
        let file: syn::File = syn::parse_str(
            "use crate::{model::{Frame, Profile}, kernel::{self, probes::*}};\n\
             use super::io as files;\n\
             #[cfg(test)] mod tests { use crate::render; }\n\
             fn f() { crate::text::bytes(1); }",
        )
        .unwrap();
        let mut paths = Paths::default();
        paths.visit_file(&file);
        let found: Vec<String> = paths.found.iter().map(|path| path.join("::")).collect();
        assert_eq!(
            found,
            [
                "crate::model::Frame",
                "crate::model::Profile",
                "crate::kernel",
                "crate::kernel::probes",
                "super::io",
                "crate::text::bytes",
            ]
        );
    }
}
