//! Picks the kernel modules the test guest carries and orders them for loading.
//!
//! Debian's kernel package has no `modules.dep` (`depmod` runs at install time), so dependencies
//! come from each module's own `.modinfo` `depends=` field (see [`crate::modinfo`]); no host tool
//! is needed. The result is a load order in which every module follows all it depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::modinfo::{parse_modinfo, MAX_MODULE_LEN};

/// The modules the guest carries (their dependencies come along): every virtio transport and
/// device rampart emulates, plus vsock.
pub const ROOTS: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_console",
    "virtio_balloon",
    "vmw_vsock_virtio_transport",
    // The ACPI power button (system_powerdown) and the input events acpid reads.
    "button",
    "evdev",
];

/// Most modules accepted in one guest (the real set is about a dozen).
const MAX_MODULES: usize = 256;

/// One module, ready to pack.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    pub depends: Vec<String>,
    pub bytes: Vec<u8>,
}

/// Modules in load order, for one kernel release.
#[derive(Debug)]
pub struct ModuleSet {
    pub release: String,
    pub modules: Vec<Module>,
    /// Requested roots that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
}

/// Module names use `_`; file names may use `-` (`virtio-rng.ko` is `virtio_rng`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Orders `roots` and everything they need so that each module comes after its dependencies.
/// `deps` gives each known module's direct dependencies; roots are visited in the given order.
pub fn load_order(deps: &BTreeMap<String, Vec<String>>, roots: &[&str]) -> Result<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    // Iterative depth-first search: (module, index of the next dependency to visit).
    for &root in roots {
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        while let Some((name, next)) = stack.pop() {
            if next == 0 {
                match marks.get(name) {
                    Some(Mark::Done) => continue,
                    Some(Mark::Visiting) => bail!("module dependency cycle through {name}"),
                    None => {
                        marks.insert(name, Mark::Visiting);
                    }
                }
            }
            let direct = deps.get(name).with_context(|| {
                format!("module {name} is needed but not in the kernel package")
            })?;
            if let Some(dep) = direct.get(next) {
                stack.push((name, next + 1));
                match marks.get(dep.as_str()) {
                    Some(Mark::Done) => {}
                    Some(Mark::Visiting) => bail!("module dependency cycle: {name} -> {dep}"),
                    None => stack.push((dep, 0)),
                }
            } else {
                marks.insert(name, Mark::Done);
                order.push(name.to_owned());
                if order.len() > MAX_MODULES {
                    bail!("more than {MAX_MODULES} modules needed; refusing");
                }
            }
        }
    }
    Ok(order)
}

/// For each module in `order`, its transitive dependencies, themselves in load order.
pub fn closures(
    deps: &BTreeMap<String, Vec<String>>,
    order: &[String],
) -> BTreeMap<String, Vec<String>> {
    let position: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in order {
        let mut all = BTreeSet::new();
        for d in deps.get(name).into_iter().flatten() {
            all.insert(d.clone());
            all.extend(out.get(d).into_iter().flatten().cloned());
        }
        let mut all: Vec<String> = all.into_iter().collect();
        all.sort_by_key(|n| position.get(n.as_str()).copied().unwrap_or(usize::MAX));
        out.insert(name.clone(), all);
    }
    out
}

/// The `/lib/modules/load-order` file /init reads: one module a line, in load order, each
/// followed by all it needs (transitively, in load order).
pub fn render_load_order(set: &ModuleSet) -> String {
    let deps: BTreeMap<String, Vec<String>> = set
        .modules
        .iter()
        .map(|m| (m.name.clone(), m.depends.clone()))
        .collect();
    let order: Vec<String> = set.modules.iter().map(|m| m.name.clone()).collect();
    let closure = closures(&deps, &order);
    let mut text = format!(
        "# kernel {}: module, then every module it needs, in load order\n",
        set.release
    );
    for name in &order {
        let needs = closure.get(name).map(|v| v.join(" ")).unwrap_or_default();
        let line = format!("{name} {needs}");
        let _ = writeln!(text, "{}", line.trim_end());
    }
    text
}

/// Walks `dir` for `.ko` files (bounded depth), mapping module name to path.
fn index_tree(dir: &Path, depth: usize, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    if depth > 16 {
        bail!("{} is nested too deep", dir.display());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            index_tree(&path, depth + 1, out)?;
            continue;
        }
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = file.strip_suffix(".ko") {
            out.insert(normalize(stem), path);
        } else if file.contains(".ko.") {
            let stem = file.split(".ko.").next().unwrap_or_default();
            out.entry(normalize(stem)).or_insert(path);
        }
    }
    Ok(())
}

/// The single `lib/modules/<release>` directory of an unpacked kernel package.
pub fn release_dir(root: &Path) -> Result<(String, PathBuf)> {
    let base = root.join("lib/modules");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&base).with_context(|| format!("reading {}", base.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            found.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!(
            "expected one kernel release under {}, found {n}",
            base.display()
        ),
    }
}

/// Reads the modules `roots` need out of an unpacked kernel package rooted at `root`.
pub fn collect(root: &Path, roots: &[&str]) -> Result<ModuleSet> {
    let (release, dir) = release_dir(root)?;
    let builtin_list = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin_names: BTreeSet<String> = builtin_list
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(normalize)
        .collect();
    let mut files = BTreeMap::new();
    index_tree(&dir.join("kernel"), 0, &mut files)?;

    let builtin: Vec<String> = roots
        .iter()
        .filter(|r| builtin_names.contains(**r))
        .map(|r| r.to_string())
        .collect();
    let wanted: Vec<&str> = roots
        .iter()
        .copied()
        .filter(|r| !builtin_names.contains(*r))
        .collect();

    // Read modules breadth-first from the roots until every dependency is known.
    let mut loaded: BTreeMap<String, Module> = BTreeMap::new();
    let mut queue: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
    while let Some(name) = queue.pop() {
        if loaded.contains_key(&name) {
            continue;
        }
        if loaded.len() >= MAX_MODULES {
            bail!("more than {MAX_MODULES} modules needed; refusing");
        }
        let path = files
            .get(&name)
            .with_context(|| format!("module {name} not found under {}", dir.display()))?;
        let len = std::fs::metadata(path)?.len();
        if len > MAX_MODULE_LEN as u64 {
            bail!("{} is {len} bytes, too large for a module", path.display());
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let info = parse_modinfo(&bytes).with_context(|| format!("module {}", path.display()))?;
        if let Some(own) = &info.name {
            if *own != name {
                bail!("{} calls itself {own:?}, expected {name:?}", path.display());
            }
        }
        if let Some(magic) = &info.vermagic {
            if !magic.starts_with(&format!("{release} ")) {
                tracing::warn!(module = %name, %magic, %release, "vermagic does not match the kernel release");
            }
        }
        queue.extend(info.depends.iter().cloned());
        loaded.insert(
            name.clone(),
            Module {
                name,
                depends: info.depends,
                bytes,
            },
        );
    }
    let deps: BTreeMap<String, Vec<String>> = loaded
        .iter()
        .map(|(n, m)| (n.clone(), m.depends.clone()))
        .collect();
    let order = load_order(&deps, &wanted)?;
    let modules = order
        .iter()
        .filter_map(|n| loaded.remove(n))
        .collect::<Vec<_>>();
    Ok(ModuleSet {
        release,
        modules,
        builtin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn virtio_graph() -> BTreeMap<String, Vec<String>> {
        graph(&[
            ("virtio_ring", &[]),
            ("virtio", &["virtio_ring"]),
            ("virtio_pci_modern_dev", &[]),
            ("virtio_pci_legacy_dev", &[]),
            (
                "virtio_pci",
                &[
                    "virtio_ring",
                    "virtio_pci_modern_dev",
                    "virtio_pci_legacy_dev",
                    "virtio",
                ],
            ),
            ("failover", &[]),
            ("net_failover", &["failover"]),
            ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            ("virtio_blk", &["virtio", "virtio_ring"]),
        ])
    }

    fn assert_deps_first(deps: &BTreeMap<String, Vec<String>>, order: &[String]) {
        for (i, n) in order.iter().enumerate() {
            for d in &deps[n] {
                let j = order
                    .iter()
                    .position(|x| x == d)
                    .expect("dependency packed");
                assert!(j < i, "{d} must load before {n}");
            }
        }
    }

    #[test]
    fn orders_every_module_after_its_dependencies() {
        // Arrange
        let deps = virtio_graph();

        // Act
        let order = load_order(&deps, &["virtio_pci", "virtio_net", "virtio_blk"]).unwrap();

        // Assert
        assert_eq!(order.len(), deps.len());
        assert_deps_first(&deps, &order);
        assert_eq!(order[0], "virtio_ring");
    }

    #[test]
    fn lists_each_module_once() {
        let order = load_order(&virtio_graph(), &["virtio_blk", "virtio_blk", "virtio"]).unwrap();
        assert_eq!(order, ["virtio_ring", "virtio", "virtio_blk"]);
    }

    #[test]
    fn rejects_dependency_cycle() {
        let deps = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let err = load_order(&deps, &["a"]).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn rejects_missing_dependency_naming_it() {
        let deps = graph(&[("a", &["ghost"])]);
        let err = load_order(&deps, &["a"]).unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
    }

    #[test]
    fn closure_lists_transitive_dependencies_in_load_order() {
        // Arrange
        let deps = virtio_graph();
        let order = load_order(&deps, &["virtio_pci", "virtio_net"]).unwrap();

        // Act
        let closure = closures(&deps, &order);

        // Assert
        let net = &closure["virtio_net"];
        assert_eq!(net.len(), 4);
        assert!(net.contains(&"failover".to_string()));
        let mut sorted = net.clone();
        sorted.sort_by_key(|n| order.iter().position(|x| x == n));
        assert_eq!(*net, sorted);
        assert!(closure["virtio_ring"].is_empty());
    }

    #[test]
    fn renders_load_order_file_one_module_a_line() {
        // Arrange
        let m = |name: &str, deps: &[&str]| Module {
            name: name.into(),
            depends: deps.iter().map(|s| s.to_string()).collect(),
            bytes: vec![],
        };
        let set = ModuleSet {
            release: "6.1.0-57-amd64".into(),
            modules: vec![
                m("virtio_ring", &[]),
                m("virtio", &["virtio_ring"]),
                m("virtio_blk", &["virtio"]),
            ],
            builtin: vec![],
        };

        // Act
        let text = render_load_order(&set);

        // Assert
        let lines: Vec<_> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "virtio_ring",
                "virtio virtio_ring",
                "virtio_blk virtio_ring virtio"
            ]
        );
    }

    #[test]
    fn normalizes_dashes_in_file_names() {
        assert_eq!(normalize("virtio-rng"), "virtio_rng");
    }
}
