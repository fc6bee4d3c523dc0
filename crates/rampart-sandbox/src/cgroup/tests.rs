//! The v1 and v2 logic against a fake cgroupfs in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rampart_config::{CgroupLimits, CpuMax, IoMax};

use super::detect::V1Hierarchy;
use super::*;

struct FakeFs(PathBuf);

impl FakeFs {
    fn new(tag: &str) -> FakeFs {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rampart-cgroup-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakeFs(dir)
    }

    fn dir(&self, rel: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = self.0.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        for (name, content) in files {
            std::fs::write(d.join(name), content).unwrap();
        }
        d
    }
}

impl Drop for FakeFs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// A host whose unified hierarchy is `dir` (its controllers read from the fake files), with
/// these v1 hierarchies beside it.
fn v2_host(dir: &Path, v1: Vec<V1Hierarchy>) -> Hierarchies {
    Hierarchies {
        v2_dir: Some(dir.to_path_buf()),
        v2_controllers: detect::read_controllers(dir),
        v1,
    }
}

fn all_limits() -> CgroupLimits {
    CgroupLimits {
        cpu: Some(CpuMax {
            quota_us: 50_000,
            period_us: 100_000,
        }),
        memory_bytes: Some(256 << 20),
        pids: Some(64),
        io: Some(IoMax {
            major: 8,
            minor: 0,
            wbps: Some(1 << 20),
            ..Default::default()
        }),
    }
}

#[test]
fn v2_writes_every_limit_and_enables_the_controllers_for_the_child() {
    let fs = FakeFs::new("v2");
    let parent = fs.dir(
        "unified/vm.slice",
        &[
            ("cgroup.controllers", "cpuset cpu io memory pids\n"),
            ("cgroup.subtree_control", "\n"),
        ],
    );
    let host = v2_host(&parent, Vec::new());

    let cg = VmCgroup::create(&host, "rampart-1", &all_limits()).unwrap();
    cg.join().unwrap();

    let dir = parent.join("rampart-1");
    assert_eq!(cg.dirs(), std::slice::from_ref(&dir));
    assert_eq!(
        read(&parent, "cgroup.subtree_control"),
        "+cpu +memory +pids +io"
    );
    assert_eq!(read(&dir, "cpu.max"), "50000 100000");
    assert_eq!(read(&dir, "memory.max"), "268435456");
    assert_eq!(read(&dir, "pids.max"), "64");
    assert_eq!(
        read(&dir, "io.max"),
        "8:0 rbps=max wbps=1048576 riops=max wiops=max"
    );
    assert_eq!(read(&dir, "cgroup.procs"), "0");
}

#[test]
fn v2_leaves_enabled_controllers_alone() {
    let fs = FakeFs::new("v2-enabled");
    let parent = fs.dir(
        "unified",
        &[
            ("cgroup.controllers", "memory pids\n"),
            ("cgroup.subtree_control", "memory pids\n"),
        ],
    );
    let host = v2_host(&parent, Vec::new());
    let limits = CgroupLimits {
        pids: Some(10),
        ..Default::default()
    };

    VmCgroup::create(&host, "vm", &limits).unwrap();

    assert_eq!(read(&parent, "cgroup.subtree_control"), "memory pids\n");
    assert_eq!(read(&parent.join("vm"), "pids.max"), "10");
}

#[test]
fn hybrid_host_uses_v1_for_controllers_the_v2_hierarchy_lacks() {
    let fs = FakeFs::new("hybrid");
    let unified = fs.dir("unified", &[("cgroup.controllers", "hugetlb\n")]);
    let memory = fs.dir("memory/process_api/abc", &[]);
    let pids = fs.dir("pids", &[]);
    let cpu = fs.dir("cpu", &[]);
    let blkio = fs.dir("blkio", &[]);
    let v1 = |c: &str, dir: &Path| V1Hierarchy {
        controllers: vec![c.to_string()],
        dir: dir.to_path_buf(),
    };
    let host = v2_host(
        &unified,
        vec![
            v1("memory", &memory),
            v1("pids", &pids),
            v1("cpu", &cpu),
            v1("blkio", &blkio),
        ],
    );

    let cg = VmCgroup::create(&host, "rampart-7", &all_limits()).unwrap();

    assert_eq!(cg.dirs().len(), 4);
    assert!(!unified.join("rampart-7").exists());
    assert_eq!(
        read(&memory.join("rampart-7"), "memory.limit_in_bytes"),
        "268435456"
    );
    assert_eq!(read(&pids.join("rampart-7"), "pids.max"), "64");
    assert_eq!(read(&cpu.join("rampart-7"), "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&cpu.join("rampart-7"), "cpu.cfs_quota_us"), "50000");
    assert_eq!(
        read(&blkio.join("rampart-7"), "blkio.throttle.write_bps_device"),
        "8:0 1048576"
    );
    assert!(!blkio
        .join("rampart-7/blkio.throttle.read_bps_device")
        .exists());
}

#[test]
fn a_controller_the_host_lacks_is_named_and_nothing_is_created() {
    let fs = FakeFs::new("missing");
    let memory = fs.dir("memory", &[]);
    let host = Hierarchies {
        v2_dir: None,
        v2_controllers: Vec::new(),
        v1: vec![V1Hierarchy {
            controllers: vec!["memory".into()],
            dir: memory.clone(),
        }],
    };

    let err = VmCgroup::create(&host, "vm", &all_limits()).unwrap_err();

    assert!(
        err.to_string()
            .starts_with("-run-with cpu-max: this host has no 'cpu' cgroup controller"),
        "{err}"
    );
    assert!(!memory.join("vm").exists());
}

#[test]
fn oom_kills_are_read_from_the_memory_cgroup() {
    let fs = FakeFs::new("oom");
    let memory = fs.dir("memory", &[]);
    let host = Hierarchies {
        v2_dir: None,
        v2_controllers: Vec::new(),
        v1: vec![V1Hierarchy {
            controllers: vec!["memory".into()],
            dir: memory.clone(),
        }],
    };
    let limits = CgroupLimits {
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    let cg = VmCgroup::create(&host, "vm", &limits).unwrap();
    std::fs::write(
        memory.join("vm/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();

    assert_eq!(cg.oom_kills(), 2);
}
