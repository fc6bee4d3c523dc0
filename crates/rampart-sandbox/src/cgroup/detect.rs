//! Which cgroup hierarchies this host has and where this process sits in each, from
//! `/proc/self/mountinfo`, `/proc/self/cgroup` and `/proc/cgroups` (parsing kept free of I/O).

use std::path::{Path, PathBuf};

/// A cgroup v1 hierarchy: the controllers bound to it and this process's cgroup directory in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub controllers: Vec<String>,
    pub dir: PathBuf,
}

/// The cgroup hierarchies of this process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hierarchies {
    /// This process's cgroup directory in the v2 (unified) hierarchy, if one is mounted.
    pub v2_dir: Option<PathBuf>,
    /// The controllers available to children of `v2_dir` (its `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    pub v1: Vec<V1Hierarchy>,
}

impl Hierarchies {
    /// The v1 hierarchy that has `controller`.
    pub fn v1_with(&self, controller: &str) -> Option<&V1Hierarchy> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }
}

/// One cgroup mount from mountinfo.
#[derive(Debug)]
struct CgroupMount {
    /// The mount's root within the hierarchy (field 4).
    root: String,
    mount_point: PathBuf,
    /// `None` for cgroup2, else the controllers in the super options.
    v1_controllers: Option<Vec<String>>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let d = |k: usize| u32::from(b[i + k] - b'0');
            out.push(u8::try_from(d(1) * 64 + d(2) * 8 + d(3)).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let v1_controllers = match post[0] {
            "cgroup2" => None,
            "cgroup" => Some(
                post[2]
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => continue,
        };
        out.push(CgroupMount {
            root: unescape(pre[3]),
            mount_point: PathBuf::from(unescape(pre[4])),
            v1_controllers,
        });
    }
    out
}

/// `mount_point` + (`path` relative to the mount's `root`); `None` if the path lies outside
/// what is mounted.
fn dir_in(m: &CgroupMount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" {
        path
    } else {
        let rest = path.strip_prefix(m.root.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    Some(m.mount_point.join(rel.trim_start_matches('/')))
}

/// Controllers `/proc/cgroups` lists as enabled.
fn enabled_controllers(proc_cgroups: &str) -> Vec<&str> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0])
        })
        .collect()
}

/// Finds the hierarchies (without reading `cgroup.controllers`: see [`detect`]).
pub fn parse(mountinfo: &str, self_cgroup: &str, proc_cgroups: &str) -> Hierarchies {
    let mounts = cgroup_mounts(mountinfo);
    let enabled = enabled_controllers(proc_cgroups);
    let mut h = Hierarchies::default();
    for line in self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(list), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if list.is_empty() {
            h.v2_dir = mounts
                .iter()
                .filter(|m| m.v1_controllers.is_none())
                .find_map(|m| dir_in(m, path));
            continue;
        }
        let controllers: Vec<String> = list
            .split(',')
            .filter(|c| !c.starts_with("name=") && enabled.contains(c))
            .map(str::to_owned)
            .collect();
        if controllers.is_empty() {
            continue;
        }
        let dir = mounts.iter().find_map(|m| {
            let mc = m.v1_controllers.as_ref()?;
            if controllers.iter().all(|c| mc.contains(c)) {
                dir_in(m, path)
            } else {
                None
            }
        });
        if let Some(dir) = dir {
            h.v1.push(V1Hierarchy { controllers, dir });
        }
    }
    h
}

/// Reads this host's hierarchies, and the v2 controllers available where this process sits.
pub fn detect() -> std::io::Result<Hierarchies> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
    let proc_cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let mut h = parse(&mountinfo, &self_cgroup, &proc_cgroups);
    if let Some(dir) = &h.v2_dir {
        h.v2_controllers = read_controllers(dir);
    }
    Ok(h)
}

/// The words of a v2 cgroup's `cgroup.controllers` (empty if unreadable).
pub fn read_controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's own test machine: v1 controllers, an almost empty v2 hierarchy, and a
    /// memory cgroup below the root.
    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";
    const PROC_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpu\t1\t1\t1
cpuacct\t2\t1\t1
blkio\t7\t1\t1
memory\t4\t30\t1
pids\t8\t1\t1
hugetlb\t0\t1\t1
";

    #[test]
    fn hybrid_host_has_v1_controllers_and_a_v2_mount() {
        let h = parse(HYBRID_MOUNTINFO, HYBRID_SELF, PROC_CGROUPS);

        assert_eq!(h.v2_dir, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            h.v1_with("memory").unwrap().dir,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            h.v1_with("pids").unwrap().dir,
            PathBuf::from("/sys/fs/cgroup/pids")
        );
        assert!(h.v1_with("blkio").is_some());
        assert!(h.v1_with("name=systemd").is_none());
    }

    #[test]
    fn pure_v2_host_has_only_the_unified_dir() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let self_cgroup = "0::/user.slice/vm.scope\n";

        let h = parse(mountinfo, self_cgroup, "");

        assert_eq!(
            h.v2_dir,
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/vm.scope"))
        );
        assert!(h.v1.is_empty());
    }

    #[test]
    fn mount_root_is_stripped_and_escapes_undone() {
        let mountinfo = "30 23 0:26 /outer /sys/fs/cg\\040v2 rw - cgroup2 cgroup2 rw\n";
        let h = parse(mountinfo, "0::/outer/inner\n", "");

        assert_eq!(h.v2_dir, Some(PathBuf::from("/sys/fs/cg v2/inner")));

        let h = parse(mountinfo, "0::/elsewhere\n", "");
        assert_eq!(h.v2_dir, None);
    }

    #[test]
    fn co_mounted_v1_controllers_share_a_hierarchy() {
        let mountinfo =
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let self_cgroup = "3:cpu,cpuacct:/a\n";
        let cgroups = "cpu\t3\t1\t1\ncpuacct\t3\t1\t1\n";

        let h = parse(mountinfo, self_cgroup, cgroups);

        assert_eq!(
            h.v1_with("cpu").unwrap().dir,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a")
        );
    }

    #[test]
    fn disabled_controllers_are_ignored() {
        let cgroups = "memory\t4\t1\t0\n";
        let h = parse(HYBRID_MOUNTINFO, "4:memory:/\n", cgroups);

        assert!(h.v1_with("memory").is_none());
    }
}
