//! cgroup v1 interface files: `cpu.cfs_period_us`/`cpu.cfs_quota_us`,
//! `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`), `pids.max`,
//! `blkio.throttle.*_device`.

use std::path::Path;

use rampart_config::CgroupLimits;

use super::{write_file, CgroupError};

/// Writes the limits of `controller` into the v1 cgroup `dir`.
pub(super) fn write_limits(
    dir: &Path,
    controller: &str,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    match controller {
        "cpu" => {
            if let Some(cpu) = limits.cpu {
                write_file(dir, "cpu.cfs_period_us", &cpu.period_us.to_string())?;
                write_file(dir, "cpu.cfs_quota_us", &cpu.quota_us.to_string())?;
            }
        }
        "memory" => {
            if let Some(m) = limits.memory_bytes {
                write_file(dir, "memory.limit_in_bytes", &m.to_string())?;
                // memory+swap may not be below memory alone: set after it.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write_file(dir, "memory.memsw.limit_in_bytes", &m.to_string())?;
                }
            }
        }
        "pids" => {
            if let Some(p) = limits.pids {
                write_file(dir, "pids.max", &p.to_string())?;
            }
        }
        "blkio" => {
            if let Some(io) = &limits.io {
                let dev = format!("{}:{}", io.major, io.minor);
                for (file, v) in [
                    ("blkio.throttle.read_bps_device", io.rbps),
                    ("blkio.throttle.write_bps_device", io.wbps),
                    ("blkio.throttle.read_iops_device", io.riops),
                    ("blkio.throttle.write_iops_device", io.wiops),
                ] {
                    if let Some(v) = v {
                        write_file(dir, file, &format!("{dev} {v}"))?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}
