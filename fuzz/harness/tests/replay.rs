//! Replays every committed input of every target on stable Rust: the seed corpus
//! (`fuzz/corpus/<target>/`) and the inputs that once crashed a target
//! (`fuzz/regressions/<target>/`). A failure names the target and the file.
//!
//! `cargo test --release -p rampart-fuzz-harness --test replay` (what `fuzz/replay.sh` runs).
//! Extra arguments that are files or folders replay those instead, with the target taken from
//! the parent folder's name: `... --test replay -- fuzz/regressions/decompress/xz-dict-128m`.

use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rampart_fuzz_harness::{run_target, TARGETS};

/// The largest input replayed (libFuzzer's default -max_len is far below this).
const MAX_INPUT: u64 = 16 << 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
        .to_path_buf()
}

/// Every file under `dir` (not recursive), sorted; none if it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// (target, input file) pairs to replay.
fn inputs(args: &[String]) -> Vec<(String, PathBuf)> {
    let named: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if named.is_empty() {
        let root = fuzz_dir();
        let mut all = Vec::new();
        for target in TARGETS {
            for kind in ["corpus", "regressions"] {
                for f in files_in(&root.join(kind).join(target)) {
                    all.push((target.to_string(), f));
                }
            }
        }
        return all;
    }
    let mut all = Vec::new();
    for arg in named {
        let path = PathBuf::from(arg);
        let (dir, files) = if path.is_dir() {
            (path.clone(), files_in(&path))
        } else {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                vec![path],
            )
        };
        let target = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        all.extend(files.into_iter().map(|f| (target.clone(), f)));
    }
    all
}

fn replay_one(target: &str, file: &Path) -> Result<(), String> {
    let len = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if len > MAX_INPUT {
        return Err(format!(
            "{len} bytes, over the {MAX_INPUT}-byte replay limit"
        ));
    }
    let data = std::fs::read(file).map_err(|e| e.to_string())?;
    match panic::catch_unwind(|| run_target(target, &data)) {
        Ok(Some(())) => Ok(()),
        Ok(None) => Err(format!("no target named '{target}'")),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            let at = PANIC_AT.with(|p| p.borrow().clone());
            Err(format!("{message} (panicked at {at})"))
        }
    }
}

thread_local! {
    /// Where the last panic happened (the hook's only output, so a failure is one line).
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn main() -> ExitCode {
    panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        PANIC_AT.with(|p| *p.borrow_mut() = at);
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inputs = inputs(&args);
    let (mut passed, mut failed) = (0usize, 0usize);
    for (target, file) in &inputs {
        match replay_one(target, file) {
            Ok(()) => passed += 1,
            Err(why) => {
                failed += 1;
                println!("FAIL {target} {}: {why}", file.display());
            }
        }
    }
    println!("replay: {passed} passed, {failed} failed");
    if inputs.is_empty() {
        println!("replay: no inputs found under {}", fuzz_dir().display());
        return ExitCode::FAILURE;
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
