//! The shape of the node's code, checked on its sources.
//!
//! Layers: no two modules import each other, even through others, and no module imports an
//! item defined in a module above it (its parent's or an ancestor's own file). A module file
//! may re-export its children's items; a use of such an item counts as a use of the child that
//! defines it, so a facade `mod.rs` is not an upward import.
//!
//! Size: no function is longer than a screen (70 lines), tests included.
//!
//! `cargo test -p strstore-server --test code_shape -- --nocapture` prints the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path below the crate root (`["replica", "node"]`); empty for the root.
type ModPath = Vec<String>;

#[test]
fn the_node_has_no_import_cycles_and_no_upward_imports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    load(&root, &root, &mut sources);
    assert!(sources.len() > 20, "found only {} modules under {}", sources.len(), root.display());
    let graph = Graph::build(&sources);
    println!("{}", graph.layers());
    let problems = graph.problems();
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_and_an_upward_import_but_not_a_facade() {
    let sources: BTreeMap<ModPath, String> = [
        ("", "mod a; mod b; mod p; mod q;"),
        ("a", "use crate::b::Thing; pub struct Other;"),
        ("b", "pub struct Thing; fn f() -> crate::a::Other { todo!() }"),
        ("p", "mod c; pub struct Top;"),
        ("p::c", "use super::Top;"),
        ("q", "mod d; mod e; pub use d::Low;"),
        ("q::d", "pub struct Low;"),
        ("q::e", "use super::{Low}; // use super::Nothing;\n#[cfg(test)] mod tests { use super::super::*; }\n#[cfg(test)] pub(crate) mod testing { use super::super::d; }"),
    ]
    .into_iter()
    .map(|(path, src)| (mod_path(path), src.to_string()))
    .collect();
    let problems = Graph::build(&sources).problems();
    assert_eq!(
        problems,
        ["cycle: crate::a -> crate::b -> crate::a", "upward import: crate::p::c uses crate::p",],
        "{problems:#?}"
    );
}

/// Longest a function may be, in lines from `fn` to its closing brace.
const MAX_FUNCTION_LINES: usize = 70;

#[test]
fn no_function_of_the_node_is_longer_than_a_screen() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    let mut files = 0;
    for sub in ["src", "tests"] {
        let mut sources = BTreeMap::new();
        load_all(&dir.join(sub), &mut sources);
        files += sources.len();
        for (path, src) in &sources {
            for (name, line, lines) in function_lengths(src) {
                if lines > MAX_FUNCTION_LINES {
                    long.push(format!("{path}:{line}: fn {name} has {lines} lines"));
                }
            }
        }
    }
    assert!(files > 30, "found only {files} source files");
    assert!(long.is_empty(), "over {MAX_FUNCTION_LINES} lines:\n{}", long.join("\n"));
}

#[test]
fn function_lengths_count_from_fn_to_the_closing_brace() {
    let src = "trait T { fn decl(&self); }\n\nfn two() {\n}\nfn one() -> Vec<u8> { vec![b'}'] }\n";
    assert_eq!(function_lengths(src), [("two".to_string(), 3, 2), ("one".to_string(), 5, 1)]);
}

/// Every function with a body: its name, the line of `fn` and how many lines it spans.
fn function_lengths(src: &str) -> Vec<(String, usize, usize)> {
    let toks = tokenize_with_lines(src);
    let plain: Vec<Tok> = toks.iter().map(|(tok, _)| tok.clone()).collect();
    let mut out = Vec::new();
    for (at, (tok, line)) in toks.iter().enumerate() {
        let Some(Tok::Ident(name)) = plain.get(at + 1) else { continue };
        if *tok != Tok::Ident("fn".into()) {
            continue;
        }
        let body = plain[at..].iter().position(|t| matches!(t, Tok::Punct('{' | ';')));
        let Some(open) = body.map(|b| at + b).filter(|&o| plain[o] == Tok::Punct('{')) else {
            continue;
        };
        let close = past_block(&plain, open) - 1;
        out.push((name.clone(), *line, toks[close].1 - line + 1));
    }
    out
}

/// Every `.rs` file under `dir`, keyed by its path below `dir`.
fn load_all(dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            load_all(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let src = std::fs::read_to_string(&path).expect("read a source file");
            out.insert(path.display().to_string(), src);
        }
    }
}

fn mod_path(path: &str) -> ModPath {
    path.split("::").filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Every `.rs` file under `dir` but the binaries, keyed by the module it holds.
fn load(root: &Path, dir: &Path, out: &mut BTreeMap<ModPath, String>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        let rel: Vec<String> = path
            .strip_prefix(root)
            .expect("below the root")
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        if rel.first().is_some_and(|first| first == "bin") {
            continue;
        }
        if path.is_dir() {
            load(root, &path, out);
        } else if let Some(file) = rel.last().and_then(|f| f.strip_suffix(".rs")) {
            let mut module = rel[..rel.len() - 1].to_vec();
            if file != "mod" && file != "lib" {
                module.push(file.to_string());
            }
            out.insert(module, std::fs::read_to_string(&path).expect("read a source file"));
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

fn is_ident(tok: Option<&Tok>, want: &str) -> bool {
    matches!(tok, Some(Tok::Ident(s)) if s == want)
}

/// The tokens of `src` that matter for paths: comments, strings and characters are dropped.
fn tokenize(src: &str) -> Vec<Tok> {
    tokenize_with_lines(src).into_iter().map(|(tok, _)| tok).collect()
}

/// Each token with the line (from 1) it starts on.
fn tokenize_with_lines(src: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let line_of: Vec<usize> = chars
        .iter()
        .scan(1, |line, &c| {
            let this = *line;
            *line += usize::from(c == '\n');
            Some(this)
        })
        .collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        i = match c {
            '/' if next == Some('/') => skip_while(&chars, i, |c| c != '\n'),
            '/' if next == Some('*') => skip_block_comment(&chars, i),
            '"' => skip_string(&chars, i + 1),
            'r' | 'b' if starts_raw_string(&chars, i) => skip_raw_string(&chars, i),
            '\'' => skip_char_or_lifetime(&chars, i),
            ':' if next == Some(':') => {
                toks.push((Tok::PathSep, line_of[i]));
                i + 2
            }
            c if c.is_alphanumeric() || c == '_' => {
                let end = skip_while(&chars, i, |c| c.is_alphanumeric() || c == '_');
                toks.push((Tok::Ident(chars[i..end].iter().collect()), line_of[i]));
                end
            }
            c if c.is_whitespace() => i + 1,
            c => {
                toks.push((Tok::Punct(c), line_of[i]));
                i + 1
            }
        };
    }
    toks
}

fn skip_while(chars: &[char], mut i: usize, keep: impl Fn(char) -> bool) -> usize {
    while i < chars.len() && keep(chars[i]) {
        i += 1;
    }
    i
}

fn skip_block_comment(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => depth += 1,
            ('*', '/') => {
                depth -= 1;
                if depth == 0 {
                    return i + 2;
                }
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    chars.len()
}

/// Past the closing quote of a string whose body starts at `i`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn starts_raw_string(chars: &[char], i: usize) -> bool {
    let prev_is_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    let after_prefix = match (chars[i], chars.get(i + 1)) {
        ('b', Some('r')) => i + 2,
        ('b', Some('"')) => return !prev_is_ident,
        ('r', _) => i + 1,
        _ => return false,
    };
    let quote = skip_while(chars, after_prefix, |c| c == '#');
    !prev_is_ident && chars.get(quote) == Some(&'"') && (quote > after_prefix || chars[i] != 'b')
}

fn skip_raw_string(chars: &[char], i: usize) -> usize {
    let start = skip_while(chars, i, |c| c == 'r' || c == 'b');
    let body = skip_while(chars, start, |c| c == '#');
    let hashes = body - start;
    if hashes == 0 && chars[i] == 'b' && chars.get(i + 1) == Some(&'"') {
        return skip_string(chars, i + 2);
    }
    let mut j = body + 1;
    while j < chars.len() {
        if chars[j] == '"'
            && chars[j + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes
        {
            return j + 1 + hashes;
        }
        j += 1;
    }
    j
}

/// `'x'`, `'\n'` and `'\''` are characters; `'a` is a lifetime.
fn skip_char_or_lifetime(chars: &[char], i: usize) -> usize {
    match (chars.get(i + 1), chars.get(i + 2)) {
        (Some('\\'), _) => skip_while(chars, i + 3, |c| c != '\'') + 1,
        (Some(_), Some('\'')) => i + 3,
        _ => i + 1,
    }
}

/// Drops every `#[cfg(test)] mod name { ... }` (public or not): tests may reach anywhere.
fn without_test_modules(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match test_module_body(&toks, i) {
            Some(open) => i = past_block(&toks, open),
            None => {
                out.push(toks[i].clone());
                i += 1;
            }
        }
    }
    out
}

/// Where the `{` of a test module starts, if `#[cfg(test)]` at `i` opens one.
fn test_module_body(toks: &[Tok], i: usize) -> Option<usize> {
    let cfg_test = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    if !toks[i..].starts_with(&cfg_test) {
        return None;
    }
    let mut at = i + cfg_test.len();
    if is_ident(toks.get(at), "pub") {
        at += 1;
        if toks.get(at) == Some(&Tok::Punct('(')) {
            at = past_block(toks, at);
        }
    }
    let named_mod =
        is_ident(toks.get(at), "mod") && matches!(toks.get(at + 1), Some(Tok::Ident(_)));
    (named_mod && toks.get(at + 2) == Some(&Tok::Punct('{'))).then_some(at + 2)
}

/// Past the bracket that closes the one opening at `open` (`{` or `(`).
fn past_block(toks: &[Tok], open: usize) -> usize {
    let (opening, closing) = match toks[open] {
        Tok::Punct('(') => ('(', ')'),
        _ => ('{', '}'),
    };
    let mut depth = 0;
    for (at, tok) in toks.iter().enumerate().skip(open) {
        match tok {
            Tok::Punct(c) if *c == opening => depth += 1,
            Tok::Punct(c) if *c == closing => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return at + 1;
        }
    }
    toks.len()
}

/// What one module's own file says about paths.
#[derive(Default)]
struct Module {
    /// Every path it names that starts at `crate`, `self`, `super` or a child module, as written.
    paths: Vec<Vec<String>>,
    /// Names it re-exports (`pub use`), with the path each stands for, as written.
    reexports: BTreeMap<String, Vec<String>>,
}

impl Module {
    fn parse(src: &str) -> Self {
        let toks = without_test_modules(tokenize(src));
        let mut module = Module::default();
        let mut i = 0;
        while i < toks.len() {
            if is_ident(toks.get(i), "use") {
                let public = is_public_before(&toks, i);
                let mut uses = Vec::new();
                i += 1;
                parse_use_tree(&toks, &mut i, Vec::new(), &mut uses);
                for (path, name) in uses {
                    if public {
                        module.reexports.insert(name, path.clone());
                    }
                    module.paths.push(path);
                }
                continue;
            }
            if let Some(path) = path_at(&toks, i) {
                i += 2 * path.len() - 1;
                module.paths.push(path);
                continue;
            }
            i += 1;
        }
        module
    }
}

/// Whether the `use` at `i` is preceded by `pub` or `pub(...)`.
fn is_public_before(toks: &[Tok], i: usize) -> bool {
    match i.checked_sub(1).map(|j| &toks[j]) {
        Some(Tok::Ident(s)) => s == "pub",
        Some(Tok::Punct(')')) => (0..i).rev().take(6).any(|j| is_ident(toks.get(j), "pub")),
        _ => false,
    }
}

/// A path like `crate::a::B` or `super::B` starting at `i` (not inside a longer path).
fn path_at(toks: &[Tok], i: usize) -> Option<Vec<String>> {
    let Some(Tok::Ident(first)) = toks.get(i) else { return None };
    let starts = matches!(first.as_str(), "crate" | "super" | "self");
    if !starts || toks.get(i + 1) != Some(&Tok::PathSep) || i > 0 && toks[i - 1] == Tok::PathSep {
        return None;
    }
    let mut path = vec![first.clone()];
    let mut at = i + 1;
    while toks.get(at) == Some(&Tok::PathSep) {
        match toks.get(at + 1) {
            Some(Tok::Ident(s)) => path.push(s.clone()),
            _ => break,
        }
        at += 2;
    }
    Some(path)
}

/// Parses a use tree at `at` (`a::{b, c::D as E, f::*}`), pushing each leaf's full path and the
/// name it brings into scope.
fn parse_use_tree(
    toks: &[Tok],
    at: &mut usize,
    mut prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    loop {
        match toks.get(*at) {
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                *at += 1;
            }
            Some(Tok::Punct('*')) => {
                *at += 1;
                out.push((prefix, "*".into()));
                return;
            }
            Some(Tok::Punct('{')) => {
                *at += 1;
                while !matches!(toks.get(*at), Some(Tok::Punct('}')) | None) {
                    parse_use_tree(toks, at, prefix.clone(), out);
                    if toks.get(*at) == Some(&Tok::Punct(',')) {
                        *at += 1;
                    }
                }
                *at += 1;
                return;
            }
            _ => return,
        }
        if toks.get(*at) == Some(&Tok::PathSep) {
            *at += 1;
            continue;
        }
        let mut name = prefix.last().cloned().unwrap_or_default();
        if is_ident(toks.get(*at), "as") {
            if let Some(Tok::Ident(alias)) = toks.get(*at + 1) {
                name = alias.clone();
            }
            *at += 2;
        }
        if name == "self" {
            prefix.pop();
            name = prefix.last().cloned().unwrap_or_default();
        }
        out.push((prefix, name));
        return;
    }
}

/// The crate's modules and which uses which.
struct Graph {
    modules: BTreeMap<ModPath, Module>,
    uses: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

impl Graph {
    fn build(sources: &BTreeMap<ModPath, String>) -> Self {
        let modules: BTreeMap<ModPath, Module> =
            sources.iter().map(|(path, src)| (path.clone(), Module::parse(src))).collect();
        let mut graph = Graph { modules, uses: BTreeMap::new() };
        for (module, parsed) in &graph.modules {
            let targets = parsed
                .paths
                .iter()
                .filter_map(|path| graph.absolute(module, path))
                .map(|path| graph.defining_module(&path, 0))
                .filter(|target| target != module)
                .collect();
            graph.uses.insert(module.clone(), targets);
        }
        graph
    }

    /// `path` as seen from `module`, from the crate root; `None` for other crates.
    fn absolute(&self, module: &ModPath, path: &[String]) -> Option<ModPath> {
        let mut base = module.clone();
        let mut rest = path;
        match path.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &path[1..];
            }
            Some("self") => rest = &path[1..],
            Some("super") => {
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            Some(child) => {
                let mut as_child = module.clone();
                as_child.push(child.to_string());
                self.modules.get(&as_child)?;
            }
            None => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The module whose own file defines what `path` names, following re-exports.
    fn defining_module(&self, path: &[String], depth: usize) -> ModPath {
        let mut split = path.len();
        while !self.modules.contains_key(&path[..split]) {
            split -= 1;
        }
        let (module, rest) = path.split_at(split);
        let reexported = rest.first().and_then(|name| self.modules[module].reexports.get(name));
        match reexported.and_then(|target| self.absolute(&module.to_vec(), target)) {
            Some(mut target) if depth < 16 => {
                target.extend(rest[1..].iter().cloned());
                self.defining_module(&target, depth + 1)
            }
            _ => module.to_vec(),
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen_in_cycle = BTreeSet::new();
        for module in self.uses.keys() {
            if seen_in_cycle.contains(module) {
                continue;
            }
            if let Some(cycle) = self.cycle_through(module) {
                seen_in_cycle.extend(cycle.iter().cloned());
                let names: Vec<String> = cycle.iter().chain([module]).map(name).collect();
                problems.push(format!("cycle: {}", names.join(" -> ")));
            }
        }
        for (module, targets) in &self.uses {
            for target in targets.iter().filter(|t| module.starts_with(t)) {
                problems.push(format!("upward import: {} uses {}", name(module), name(target)));
            }
        }
        problems
    }

    /// A shortest path of uses from `start` back to itself, if there is one.
    fn cycle_through(&self, start: &ModPath) -> Option<Vec<ModPath>> {
        let mut came_from: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
        let mut frontier = vec![start];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for module in frontier {
                for target in &self.uses[module] {
                    if target == start {
                        let mut cycle = vec![module.clone()];
                        while let Some(&prev) = came_from.get(cycle.last().expect("not empty")) {
                            cycle.push(prev.clone());
                        }
                        cycle.reverse();
                        return Some(cycle);
                    }
                    if !came_from.contains_key(target) && self.uses.contains_key(target) {
                        came_from.insert(target, module);
                        next.push(target);
                    }
                }
            }
            frontier = next;
        }
        None
    }

    /// Each module with its layer (one above the highest module it uses) and what it uses.
    fn layers(&self) -> String {
        let mut layer: BTreeMap<&ModPath, usize> = BTreeMap::new();
        for _ in 0..self.uses.len() {
            for (module, targets) in &self.uses {
                let above = targets.iter().map(|t| layer.get(t).map_or(0, |l| l + 1)).max();
                layer.insert(module, above.unwrap_or(0));
            }
        }
        let mut rows: Vec<(usize, String, String)> = self
            .uses
            .iter()
            .map(|(m, targets)| {
                let used: Vec<String> = targets.iter().map(name).collect();
                (layer[m], name(m), used.join(", "))
            })
            .collect();
        rows.sort();
        let mut out = String::from("layer  module  (uses)\n");
        for (layer, module, used) in rows {
            out.push_str(&format!("{layer:>5}  {module}  ({used})\n"));
        }
        out
    }
}

fn name(module: &ModPath) -> String {
    std::iter::once("crate").chain(module.iter().map(String::as_str)).collect::<Vec<_>>().join("::")
}
