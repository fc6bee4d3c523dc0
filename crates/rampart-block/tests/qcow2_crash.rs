//! Crash safety: a process writing and flushing through rampart's qcow2 layer is killed with
//! SIGKILL; afterwards `qemu-img check` finds no corruption and every write that was flushed
//! before the kill is in the image.

mod qemu;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use qemu::*;
use rampart_block::open;
use rampart_config::{BlockFormat, BlockNodeConfig};

const RECORD: usize = 20 * 1024;
const RECORDS: u64 = 400;

fn record_offset(i: u64) -> u64 {
    // A permutation of the 400 slots: consecutive records land far apart, and 20 KiB records
    // straddle 64 KiB cluster boundaries.
    (i * 7919 % RECORDS) * RECORD as u64
}

/// The child: writes records forever (until killed), flushing after every third and
/// reporting each flushed record on stdout. Only runs when started by the parent test.
#[test]
#[ignore = "helper process for sigkill_during_flushed_writes_loses_nothing_flushed"]
fn crash_child_writer() {
    let Ok(path) = std::env::var("RAMPART_CRASH_IMAGE") else {
        return;
    };
    let disk = open(&BlockNodeConfig::new("c0", BlockFormat::Qcow2, path.into())).unwrap();
    let mut i = 0u64;
    loop {
        let rec = i % RECORDS;
        println!("write {i}");
        disk.write_at(record_offset(rec), &pattern(i as u32 + 1, RECORD))
            .unwrap();
        if i % 3 == 2 {
            disk.flush().unwrap();
            println!("flushed {i}");
        }
        i += 1;
    }
}

#[test]
fn sigkill_during_flushed_writes_loses_nothing_flushed() {
    // The last round's image has lazy_refcounts=on: rampart still keeps its refcounts
    // consistent (it never sets the dirty bit), so the image is clean after the kill too.
    for (round, kill_after, opts) in [
        (0, 30u64, "lazy_refcounts=off"),
        (1, 200, "lazy_refcounts=off"),
        (2, 517, "lazy_refcounts=off"),
        (3, 300, "lazy_refcounts=on"),
    ] {
        let d = Scratch::new(&format!("crash{round}"));
        let img = d.path("disk.qcow2");
        qemu_img_ok(&["create", "-f", "qcow2", "-o", opts, s(&img), "8M"]);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "crash_child_writer", "--nocapture"])
            .env("RAMPART_CRASH_IMAGE", &img)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut last = None;
        let mut started = 0u64;
        let mut killed = false;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("write ") {
                started = started.max(n.parse().unwrap());
            }
            if let Some(n) = line.strip_prefix("flushed ") {
                let n: u64 = n.parse().unwrap();
                if !killed {
                    last = Some(n);
                }
                if n >= kill_after && !killed {
                    // SAFETY: kill() on our own child, not yet reaped.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    killed = true;
                }
            }
        }
        let _ = child.wait();
        assert!(killed, "the child ended before it was killed");
        let last = last.expect("the child never flushed");
        // Records rewritten after the last flush the parent saw hold unflushed data (possibly
        // torn by the kill): anything goes there.
        let unflushed: Vec<u64> = (last + 1..=started).map(|i| i % RECORDS).collect();

        check_ok(&img);
        let header = std::fs::read(&img).unwrap();
        assert_eq!(
            header[79] & 1,
            0,
            "round {round}: rampart left the image dirty"
        );
        // Every record's latest flushed version is there (later unflushed ones may be too, so
        // each record must match the latest write flushed, or a later one).
        let disk = open(&BlockNodeConfig::new("c0", BlockFormat::Qcow2, img.clone())).unwrap();
        for rec in 0..RECORDS.min(last + 1) {
            if unflushed.contains(&rec) {
                continue;
            }
            let mut flushed_write = rec;
            while flushed_write + RECORDS <= last {
                flushed_write += RECORDS;
            }
            let mut buf = vec![0u8; RECORD];
            disk.read_at(record_offset(rec), &mut buf).unwrap();
            let ok = buf == pattern(flushed_write as u32 + 1, RECORD);
            assert!(
                ok,
                "round {round}: record {rec} (write {flushed_write}) lost"
            );
        }
    }
}
