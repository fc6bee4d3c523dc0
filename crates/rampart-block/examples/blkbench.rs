//! Block-layer throughput: sequential writes or reads through `rampart_block` on one image,
//! one request at a time, timed from the first request to the end of the final flush. Used by
//! `bench/blk-layer`, which runs `qemu-img bench` with the same parameters beside it.
//!
//! `blkbench write|read FORMAT CACHE IMAGE COUNT BUFSIZE` prints `{"seconds": S}`.

use std::time::Instant;

use rampart_block::open;
use rampart_config::{BlockFormat, BlockNodeConfig, CacheConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 6 {
        eprintln!("usage: blkbench write|read raw|qcow2 CACHE IMAGE COUNT BUFSIZE");
        std::process::exit(2);
    }
    let write = match args[0].as_str() {
        "write" => true,
        "read" => false,
        other => panic!("unknown mode {other}"),
    };
    let format = match args[1].as_str() {
        "raw" => BlockFormat::Raw,
        "qcow2" => BlockFormat::Qcow2,
        other => panic!("unknown format {other}"),
    };
    let mut node = BlockNodeConfig::new("bench", format, args[3].clone().into());
    node.cache = CacheConfig::from_mode(&args[2]).expect("cache mode");
    node.read_only = !write;
    let count: u64 = args[4].parse().expect("COUNT");
    let bufsize: usize = args[5].parse().expect("BUFSIZE");
    let disk = open(&node).expect("opening the image");
    // A page-aligned buffer, as guest memory is (and as qemu-img bench uses).
    let mut storage = vec![0u8; bufsize + 4096];
    let start_at = storage.as_ptr().align_offset(4096);
    let buf = &mut storage[start_at..start_at + bufsize];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    let start = Instant::now();
    for i in 0..count {
        let off = i * bufsize as u64;
        if write {
            disk.write_at(off, buf).expect("write");
        } else {
            disk.read_at(off, buf).expect("read");
        }
    }
    disk.flush().expect("flush");
    drop(disk);
    println!("{{\"seconds\": {}}}", start.elapsed().as_secs_f64());
}
