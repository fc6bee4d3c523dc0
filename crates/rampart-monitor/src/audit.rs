//! The audit log (`-audit file=PATH`): one JSON line per monitor command and per connection
//! attempt. The monitor thread never waits for the disk: lines go through a bounded queue to a
//! writer thread; when the queue is full a line is dropped and counted, and the writer reports
//! the count in the log itself. A write error (a full disk) is reported, not fatal: the writer
//! keeps going and says how many lines were lost once writing works again.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use tracing::{info, warn};

/// Lines queued for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 4096;
/// Longest argument string kept in a line (longer ones are cut and marked).
const MAX_ARG_TEXT: usize = 1024;

/// Argument names whose values are secrets and never logged.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passphrase",
    "secret",
    "key",
    "key-secret",
    "token",
    "data",
    "iv",
];

/// The audit log's writer end, shared by every monitor (owned by the monitor thread).
pub struct AuditLog {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Starts the writer thread on `file` (opened by the caller, before any privilege drop).
    /// `on_start` runs first on the new thread (to install its seccomp filter).
    pub fn start(file: File, on_start: Option<Box<dyn FnOnce() + Send>>) -> io::Result<AuditLog> {
        Self::start_with(file, on_start, QUEUE_LINES)
    }

    fn start_with(
        file: File,
        on_start: Option<Box<dyn FnOnce() + Send>>,
        queue: usize,
    ) -> io::Result<AuditLog> {
        let (tx, rx) = mpsc::sync_channel(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                if let Some(f) = on_start {
                    f();
                }
                writer(file, rx, &d);
            })?;
        Ok(AuditLog {
            tx: Some(tx),
            dropped,
            thread: Some(thread),
        })
    }

    /// Queues one line; never blocks.
    pub fn record(&self, line: &Value) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line.to_string()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!("audit log queue full: lines are being dropped (counted in the log)");
                }
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it and stop.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer(mut file: File, rx: Receiver<String>, dropped: &AtomicU64) {
    let mut failed: u64 = 0;
    let mut reported_drops: u64 = 0;
    while let Ok(line) = rx.recv() {
        let drops = dropped.load(Ordering::Relaxed);
        let mut text = String::new();
        if drops > reported_drops || failed > 0 {
            text.push_str(
                &json!({
                    "timestamp": timestamp(SystemTime::now()),
                    "event": "audit-lines-lost",
                    "dropped": drops - reported_drops,
                    "write-failed": failed,
                })
                .to_string(),
            );
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        match file.write_all(text.as_bytes()) {
            Ok(()) => {
                if failed > 0 {
                    info!(lost = failed, "audit log writable again");
                }
                failed = 0;
                reported_drops = drops;
            }
            Err(e) => {
                if failed == 0 {
                    warn!("audit log write failed ({e}): lines are being lost (counted)");
                }
                failed += 1;
            }
        }
    }
}

/// `2026-11-30T04:05:06.123456Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// The arguments as logged: secrets replaced by `"<redacted>"`, long strings cut.
pub fn redact(args: &Map<String, Value>) -> Value {
    fn walk(v: &Value, depth: usize) -> Value {
        match v {
            Value::Object(m) if depth < 8 => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let secret = SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s))
                            || k.contains("password")
                            || k.contains("secret");
                        let v = if secret {
                            json!("<redacted>")
                        } else {
                            walk(v, depth + 1)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(a) if depth < 8 => {
                Value::Array(a.iter().map(|v| walk(v, depth + 1)).collect())
            }
            Value::Object(_) | Value::Array(_) => json!("<too deep>"),
            Value::String(s) if s.len() > MAX_ARG_TEXT => {
                let mut cut = MAX_ARG_TEXT;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                json!(format!("{}...<cut>", &s[..cut]))
            }
            other => other.clone(),
        }
    }
    walk(&Value::Object(args.clone()), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_795_996_800_000_001);
        assert_eq!(timestamp(t), "2026-11-30T00:00:00.000001Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn secrets_are_redacted_and_long_text_cut() {
        let args = json!({"password": "hunter2", "nested": {"key-secret": "s", "ok": 1},
                          "long": "x".repeat(5000)});
        let v = redact(args.as_object().unwrap());
        assert_eq!(v["password"], "<redacted>");
        assert_eq!(v["nested"]["key-secret"], "<redacted>");
        assert_eq!(v["nested"]["ok"], 1);
        assert!(v["long"].as_str().unwrap().ends_with("...<cut>"));
        assert!(!v.to_string().contains("hunter2"));
    }

    #[test]
    fn lines_are_written_and_a_full_queue_drops_and_counts() {
        let path = std::env::temp_dir().join(format!("rampart-audit-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        // A writer that cannot start until released: the queue (2 lines) fills up.
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let log = AuditLog::start_with(
            file,
            Some(Box::new(move || {
                let _ = go_rx.recv();
            })),
            2,
        )
        .unwrap();
        for i in 0..5 {
            log.record(&json!({"n": i}));
        }
        go_tx.send(()).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "audit-lines-lost");
        assert_eq!(lines[0]["dropped"], 3);
        assert_eq!(lines[1]["n"], 0);
        assert_eq!(lines[2]["n"], 1);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_failing_disk_is_reported_not_fatal() {
        // /dev/full: every write fails with ENOSPC.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let log = AuditLog::start(file, None).unwrap();
        log.record(&json!({"n": 1}));
        log.record(&json!({"n": 2}));
        drop(log); // joins the writer: it neither panicked nor hung
    }
}
