//! cgroup v2 interface files: `cpu.max`, `memory.max` (and `memory.swap.max`), `pids.max`,
//! `io.max`.

use std::path::Path;

use rampart_config::{CgroupLimits, IoMax};

use super::{write_file, CgroupError};

/// Enables `controllers` for the children of `parent` (its `cgroup.subtree_control`), unless
/// they already are.
pub(super) fn enable_controllers(parent: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let current =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !current.split_whitespace().any(|w| w == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !missing.is_empty() {
        write_file(parent, "cgroup.subtree_control", &missing.join(" "))?;
    }
    Ok(())
}

fn max_or(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_string(), |n| n.to_string())
}

/// The `io.max` line for `io`.
pub(super) fn io_max_line(io: &IoMax) -> String {
    format!(
        "{}:{} rbps={} wbps={} riops={} wiops={}",
        io.major,
        io.minor,
        max_or(io.rbps),
        max_or(io.wbps),
        max_or(io.riops),
        max_or(io.wiops)
    )
}

/// Writes the limits of `controllers` into the v2 cgroup `dir`.
pub(super) fn write_limits(
    dir: &Path,
    controllers: &[&str],
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    for c in controllers {
        match *c {
            "cpu" => {
                if let Some(cpu) = limits.cpu {
                    write_file(
                        dir,
                        "cpu.max",
                        &format!("{} {}", cpu.quota_us, cpu.period_us),
                    )?;
                }
            }
            "memory" => {
                if let Some(m) = limits.memory_bytes {
                    write_file(dir, "memory.max", &m.to_string())?;
                    // Without swap the limit is the whole footprint, not just what stays in RAM.
                    if dir.join("memory.swap.max").exists() {
                        write_file(dir, "memory.swap.max", "0")?;
                    }
                }
            }
            "pids" => {
                if let Some(p) = limits.pids {
                    write_file(dir, "pids.max", &p.to_string())?;
                }
            }
            "io" => {
                if let Some(io) = &limits.io {
                    write_file(dir, "io.max", &io_max_line(io))?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}
