//! Times one target on given inputs without a fuzzer or sanitizer (stable Rust), to find what
//! makes a target slow: `cargo run --release --manifest-path fuzz/Cargo.toml -p
//! rampart-fuzz-harness --example bench -- <target> <file>...`.

use std::time::Instant;

const ROUNDS: u32 = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, files)) = args.split_first() else {
        eprintln!("usage: bench <target> <file>...");
        std::process::exit(2);
    };
    for file in files {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(1);
            }
        };
        let start = Instant::now();
        for _ in 0..ROUNDS {
            if rampart_fuzz_harness::run_target(target, &data).is_none() {
                eprintln!("no target named '{target}'");
                std::process::exit(2);
            }
        }
        let micros = start.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
        println!("{micros:>10.1} us  {file}");
    }
}
