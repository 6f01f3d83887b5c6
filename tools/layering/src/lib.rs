//! Checks the structure the repository keeps, so a change that breaks it fails CI:
//!
//! - **crates**: every crate of the workspace that is listed in ARCHITECTURE.md's `layers`
//!   block may depend (in `[dependencies]` and `[build-dependencies]`) only on the gust
//!   crates listed after its arrow; a crate that is not listed may depend on no listed
//!   crate. Dev-dependencies are not checked: tests may reach into any layer.
//! - **modules**: no crate under `runtime/` has a cycle among sibling modules. A reference
//!   from module `a::x` to `b::y` counts as an edge between the siblings `a` and `b` under
//!   their common parent; parents and children may refer to each other. References are the
//!   `crate::`, `super::` and `self::` paths syn finds outside `#[cfg(test)]` modules
//!   (paths inside macro calls are not seen).
//! - **builds** (module `builds`): the `gust` binary built on its own shares every
//!   dependency's build with the test build, so CI builds wasmtime once, not twice.
//!
//! `cargo test -p gust-layering` runs them on the repository; the unit tests show that
//! each check catches what it should.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use syn::visit::Visit;

pub mod builds;

/// The crates named in ARCHITECTURE.md and the gust crates each may depend on.
pub type Layers = BTreeMap<String, BTreeSet<String>>;

/// Reads the `layers` block of ARCHITECTURE.md: one crate a line, `name -> dep dep …`.
///
/// # Errors
/// When there is no such block, or a line does not have that shape.
pub fn parse_layers(markdown: &str) -> anyhow::Result<Layers> {
    let start = markdown
        .find("```layers")
        .context("ARCHITECTURE.md has no ```layers block")?;
    let body = &markdown[start + "```layers".len()..];
    let end = body
        .find("```")
        .context("the ```layers block is not closed")?;
    let mut layers = Layers::new();
    for line in body[..end].lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, deps) = line
            .split_once("->")
            .with_context(|| format!("`{line}`: write it as `crate -> dep dep …`"))?;
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        if layers.insert(name.trim().to_owned(), deps).is_some() {
            bail!("`{}` is listed twice", name.trim());
        }
    }
    Ok(layers)
}

/// One crate of the workspace: its name, folder, and the crates it depends on outside of
/// tests (by package name).
#[derive(Debug, Clone)]
pub struct Member {
    /// The package name.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// `[dependencies]` and `[build-dependencies]`, by package name.
    pub deps: BTreeSet<String>,
}

/// The members of the workspace whose root is `root`.
///
/// # Errors
/// When a manifest cannot be read or parsed.
pub fn members(root: &Path) -> anyhow::Result<Vec<Member>> {
    let manifest: toml::Table = read_toml(&root.join("Cargo.toml"))?;
    let list = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .context("the workspace manifest lists no members")?;
    let mut members = Vec::new();
    for dir in list.iter().filter_map(|m| m.as_str()) {
        let dir = root.join(dir);
        let manifest: toml::Table = read_toml(&dir.join("Cargo.toml"))?;
        let name = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .with_context(|| format!("{} has no package name", dir.display()))?
            .to_owned();
        let mut deps = BTreeSet::new();
        for table in ["dependencies", "build-dependencies"] {
            if let Some(table) = manifest.get(table).and_then(|t| t.as_table()) {
                for (key, value) in table {
                    // `name = { package = "real-name", … }` renames a dependency.
                    let package = value.get("package").and_then(|p| p.as_str()).unwrap_or(key);
                    deps.insert(package.to_owned());
                }
            }
        }
        members.push(Member { name, dir, deps });
    }
    Ok(members)
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every dependency between the listed crates that `layers` does not allow, one line each.
pub fn forbidden_dependencies(members: &[Member], layers: &Layers) -> Vec<String> {
    let mut problems = Vec::new();
    for member in members {
        let allowed = layers.get(&member.name);
        for dep in member.deps.iter().filter(|d| layers.contains_key(*d)) {
            if !allowed.is_some_and(|a| a.contains(dep)) {
                problems.push(format!(
                    "{} depends on {dep}, which ARCHITECTURE.md does not allow",
                    member.name
                ));
            }
        }
    }
    for (name, deps) in layers {
        if !members.iter().any(|m| &m.name == name) {
            problems.push(format!(
                "ARCHITECTURE.md lists {name}, which is not in the workspace"
            ));
        }
        for dep in deps.iter().filter(|d| !layers.contains_key(*d)) {
            problems.push(format!(
                "ARCHITECTURE.md lets {name} depend on {dep}, which it does not list"
            ));
        }
    }
    problems
}

/// A module path inside a crate, `["deploy", "registry"]` for `crate::deploy::registry`.
type ModulePath = Vec<String>;

/// A reference from one module to another, with the path written.
type Reference = (ModulePath, ModulePath, String);

/// The modules of the crate whose source root is `lib` (its `lib.rs` or `main.rs`), and
/// the references between them: (from, to, what was written).
///
/// # Errors
/// When a file cannot be read or parsed.
pub fn module_references(lib: &Path) -> anyhow::Result<(BTreeSet<ModulePath>, Vec<Reference>)> {
    let mut modules = BTreeSet::new();
    let mut raw = Vec::new();
    let src = lib.parent().context("a source file has a folder")?;
    collect(src, lib, Vec::new(), &mut modules, &mut raw)?;
    let mut references = Vec::new();
    for (from, path) in raw {
        if let Some(to) = resolve(&from, &path, &modules) {
            references.push((from, to, path.join("::")));
        }
    }
    Ok((modules, references))
}

/// Parses `file` as module `module` (whose child files live in `dir`), recording modules
/// and the `crate`/`super`/`self` paths written in each.
fn collect(
    dir: &Path,
    file: &Path,
    module: ModulePath,
    modules: &mut BTreeSet<ModulePath>,
    raw: &mut Vec<(ModulePath, Vec<String>)>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
    modules.insert(module.clone());
    walk_items(dir, &parsed.items, &module, modules, raw)
}

fn walk_items(
    dir: &Path,
    items: &[syn::Item],
    module: &ModulePath,
    modules: &mut BTreeSet<ModulePath>,
    raw: &mut Vec<(ModulePath, Vec<String>)>,
) -> anyhow::Result<()> {
    let mut paths = Paths::default();
    for item in items {
        match item {
            syn::Item::Mod(m) if is_test_only(&m.attrs) => {}
            syn::Item::Mod(m) => {
                let mut child = module.clone();
                child.push(m.ident.to_string());
                match &m.content {
                    // An inline module: its items are here; its own files would be in
                    // `dir/<name>/`.
                    Some((_, inner)) => {
                        modules.insert(child.clone());
                        walk_items(&dir.join(m.ident.to_string()), inner, &child, modules, raw)?;
                    }
                    None => {
                        let name = m.ident.to_string();
                        let (file, child_dir) = if dir.join(format!("{name}.rs")).exists() {
                            (dir.join(format!("{name}.rs")), dir.join(&name))
                        } else {
                            (dir.join(&name).join("mod.rs"), dir.join(&name))
                        };
                        collect(&child_dir, &file, child, modules, raw)?;
                    }
                }
            }
            other => paths.visit_item(other),
        }
    }
    raw.extend(paths.found.into_iter().map(|p| (module.clone(), p)));
    Ok(())
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The `crate::`, `super::` and `self::` paths in `use` items and in code.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefixes = Vec::new();
        flatten(&item.tree, &mut Vec::new(), &mut prefixes);
        self.found
            .extend(prefixes.into_iter().filter(|p| is_relative(p)));
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if is_relative(&segments) {
            self.found.push(segments);
        }
        syn::visit::visit_path(self, path);
    }
}

fn is_relative(path: &[String]) -> bool {
    matches!(
        path.first().map(String::as_str),
        Some("crate" | "super" | "self")
    )
}

/// Every path a `use` tree names, one per leaf.
fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut path = prefix.clone();
            // `use super::{self, x}`: `self` names the prefix itself.
            if n.ident != "self" {
                path.push(n.ident.to_string());
            }
            out.push(path);
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push(path);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                flatten(tree, prefix, out);
            }
        }
    }
}

/// The deepest module `path`, written in module `from`, leads to.
fn resolve(
    from: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    let mut at: ModulePath = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => from.clone(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        at.pop()?;
    }
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                at.pop()?;
            }
            "self" => {}
            name => {
                let mut next = at.clone();
                next.push(name.to_owned());
                if !modules.contains(&next) {
                    break;
                }
                at = next;
            }
        }
        rest = &rest[1..];
    }
    Some(at)
}

/// The cycles among sibling modules, each as `parent: a -> b -> … -> a`, with a reference
/// that makes each edge.
pub fn module_cycles(references: &[Reference]) -> Vec<String> {
    // parent → (child → (child → an example reference)).
    let mut graphs: BTreeMap<ModulePath, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for (from, to, written) in references {
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        // One is the other's ancestor (or the same module): parent and child may refer to
        // each other.
        if common == from.len() || common == to.len() {
            continue;
        }
        let parent = from[..common].to_vec();
        let example = format!("{} uses {written}", display(from));
        graphs
            .entry(parent)
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .entry(to[common].clone())
            .or_insert(example);
    }
    let mut cycles = Vec::new();
    for (parent, graph) in &graphs {
        for cycle in find_cycles(graph) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| graph[&w[0]][&w[1]].clone())
                .collect();
            cycles.push(format!(
                "a module cycle in {}: {} ({})",
                display(parent),
                cycle.join(" -> "),
                steps.join("; ")
            ));
        }
    }
    cycles
}

/// One cycle per strongly connected component with more than one node, as a closed walk.
fn find_cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    let mut cycles = Vec::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for start in graph.keys() {
        if reported.contains(start) {
            continue;
        }
        // A path from `start` back to itself, by depth-first search.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).map(|e| e.keys()).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    reported.extend(path.iter().cloned());
                    cycles.push(cycle);
                    stack.clear();
                    break;
                }
                if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    cycles
}

fn display(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        format!("crate::{}", module.join("::"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository itself: its crates depend on each other as ARCHITECTURE.md allows,
    /// and no crate under `runtime/` has a module cycle.
    /// The repository this test runs in. Read when it runs, not when it was compiled: clones
    /// that share one `CARGO_TARGET_DIR` (as `.ci/run` and local work do) may run a binary
    /// cargo built in another clone, whose compile-time path names that clone's sources.
    /// `cargo test` sets the variable for the binaries it runs.
    pub(crate) fn repository_root() -> std::path::PathBuf {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        Path::new(&manifest_dir).join("../..")
    }

    #[test]
    fn the_repository_keeps_its_layers() {
        let root = repository_root();
        let markdown = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
        let layers = parse_layers(&markdown).unwrap();
        let members = members(&root).unwrap();
        let mut problems = forbidden_dependencies(&members, &layers);
        let runtime = root.join("runtime").canonicalize().unwrap();
        let mut checked = 0;
        for member in &members {
            let dir = member.dir.canonicalize().unwrap();
            if !dir.starts_with(&runtime) {
                continue;
            }
            for lib in ["src/lib.rs", "src/main.rs"].map(|f| dir.join(f)) {
                if lib.exists() {
                    let (_, references) = module_references(&lib).unwrap();
                    problems.extend(
                        module_cycles(&references)
                            .into_iter()
                            .map(|c| format!("{}: {c}", member.name)),
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 7, "only {checked} crate roots were checked");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn a_dependency_the_layers_do_not_allow_is_reported() {
        let layers =
            parse_layers("text\n```layers\n# outside in\ntop -> low\nlow ->\n```\nmore text")
                .unwrap();
        let member = |name: &str, deps: &[&str]| Member {
            name: name.into(),
            dir: PathBuf::new(),
            deps: deps.iter().map(|d| (*d).to_owned()).collect(),
        };
        let fine = [member("top", &["low", "serde"]), member("low", &["anyhow"])];
        assert!(forbidden_dependencies(&fine, &layers).is_empty());
        let upward = [member("top", &["low"]), member("low", &["top"])];
        assert_eq!(
            forbidden_dependencies(&upward, &layers),
            ["low depends on top, which ARCHITECTURE.md does not allow"]
        );
        let unlisted = [
            member("top", &[]),
            member("low", &[]),
            member("x", &["low"]),
        ];
        assert_eq!(forbidden_dependencies(&unlisted, &layers).len(), 1);
    }

    #[test]
    fn a_cycle_between_sibling_modules_is_reported_and_parent_child_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(
            src.join("lib.rs"),
            "mod a; mod b; mod c;\n#[cfg(test)] mod tests { use crate::c::Z; }\n",
        )
        .unwrap();
        // a/mod.rs and its child use each other (allowed); a::inner uses b (a -> b).
        std::fs::write(
            src.join("a/mod.rs"),
            "mod inner; pub use inner::X; use self::inner::Y;\n",
        )
        .unwrap();
        std::fs::write(
            src.join("a/inner.rs"),
            "use super::super::b::B; pub struct X; pub struct Y;\n",
        )
        .unwrap();
        std::fs::write(src.join("c.rs"), "pub struct Z;\n").unwrap();
        // b uses a in code (b -> a): a cycle a -> b -> a.
        std::fs::write(
            src.join("b.rs"),
            "pub struct B; fn f() -> crate::a::X { crate::a::X }\n",
        )
        .unwrap();
        let (modules, references) = module_references(&src.join("lib.rs")).unwrap();
        assert!(modules.contains(&vec!["a".to_owned(), "inner".to_owned()]));
        let cycles = module_cycles(&references);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert!(
            cycles[0].contains("a -> b -> a") || cycles[0].contains("b -> a -> b"),
            "{}",
            cycles[0]
        );

        // Without b's reference there is none (and the test module's use of c is ignored).
        std::fs::write(src.join("b.rs"), "pub struct B;\n").unwrap();
        std::fs::write(src.join("c.rs"), "pub struct Z; use crate::a::X;\n").unwrap();
        let (_, references) = module_references(&src.join("lib.rs")).unwrap();
        assert!(module_cycles(&references).is_empty());
    }
}
