//! The human monitor (HMP): command lines in, text out, through the same command layer as QMP.

use serde_json::Value;

use crate::dispatch::{Dispatcher, Peer};
use crate::error::QmpError;

/// The prompt, as QEMU's.
pub const PROMPT: &str = "(qemu) ";

/// Longest accepted command line; longer lines are refused whole.
pub const MAX_LINE: usize = 4096;

const HELP: &[(&str, &str)] = &[
    (
        "closefd closefd name",
        "close a file descriptor previously passed via SCM rights",
    ),
    ("cont|c", "resume emulation"),
    (
        "getfd getfd name",
        "receive a file descriptor via SCM rights and assign it a name",
    ),
    ("help|? [cmd]", "show the help"),
    (
        "info [subcommand]",
        "show various information about the system state",
    ),
    (
        "netdev_set_throttle id rx-bps rx-pps tx-bps tx-pps",
        "change a network back end's rate limits (0 = unlimited; rampart's own)",
    ),
    ("quit|q", "quit the emulator"),
    (
        "set_link name on|off",
        "change the link status of a network adapter",
    ),
    ("stop|s", "stop emulation"),
    ("system_powerdown", "send system power down event"),
    ("system_reset", "reset the system"),
];

const INFO_HELP: &[(&str, &str)] = &[
    ("info block", "show the block devices"),
    ("info chardev", "show the character devices"),
    ("info cpus", "show infos for each CPU"),
    ("info name", "show the current VM name"),
    (
        "info netdev_throttle",
        "show the rate limits of the network back ends",
    ),
    ("info status", "show the current VM status (running|paused)"),
    ("info version", "show the version of QEMU"),
];

fn table(rows: &[(&str, &str)]) -> String {
    rows.iter().map(|(c, d)| format!("{c} -- {d}\n")).collect()
}

/// The banner a new HMP connection sees (before the first prompt).
pub fn banner(d: &Dispatcher) -> String {
    let (a, b, c) = d.info().version;
    format!("rampart {a}.{b}.{c} monitor - type 'help' for more information\r\n")
}

/// Runs one command line; returns its output with QEMU's `\r\n` line ends.
pub fn run_line(d: &mut Dispatcher, peer: &Peer, line: &str) -> String {
    let text = match execute(d, peer, line.trim()) {
        Ok(t) => t,
        Err(e) => format!("Error: {}\n", e.desc),
    };
    text.replace('\n', "\r\n")
}

fn simple(d: &mut Dispatcher, peer: &Peer, cmd: &str) -> Result<String, QmpError> {
    d.execute(peer, cmd, None).map(|_| String::new())
}

fn execute(d: &mut Dispatcher, peer: &Peer, line: &str) -> Result<String, QmpError> {
    let mut words = line.split_whitespace();
    let Some(cmd) = words.next() else {
        return Ok(String::new());
    };
    let rest: Vec<&str> = words.collect();
    let no_args = |name: &str| -> Result<(), QmpError> {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(QmpError::generic(format!(
                "{name}: too many arguments ('{}')",
                rest.join(" ")
            )))
        }
    };
    match cmd {
        "help" | "?" => Ok(match rest.first() {
            Some(&"info") => table(INFO_HELP),
            Some(other) => match HELP
                .iter()
                .find(|(c, _)| c.split(['|', ' ']).any(|w| w == *other))
            {
                Some(row) => table(std::slice::from_ref(row)),
                None => format!("unknown command: '{other}'\n"),
            },
            None => table(HELP),
        }),
        "stop" | "s" => {
            no_args("stop")?;
            simple(d, peer, "stop")
        }
        "cont" | "c" => {
            no_args("cont")?;
            simple(d, peer, "cont")
        }
        "system_reset" => {
            no_args("system_reset")?;
            simple(d, peer, "system_reset")
        }
        "system_powerdown" => {
            no_args("system_powerdown")?;
            simple(d, peer, "system_powerdown")
        }
        "getfd" | "closefd" => match rest.as_slice() {
            [fdname] => d
                .execute(peer, cmd, Some(&serde_json::json!({ "fdname": fdname })))
                .map(|_| String::new()),
            _ => Err(QmpError::generic(format!(
                "{cmd}: expects one argument, a name"
            ))),
        },
        "quit" | "q" => {
            no_args("quit")?;
            simple(d, peer, "quit")
        }
        "set_link" => match rest.as_slice() {
            [name, state @ ("on" | "off")] => {
                let args = serde_json::json!({"name": name, "up": *state == "on"});
                d.execute(peer, "set_link", Some(&args))
                    .map(|_| String::new())
            }
            _ => Err(QmpError::generic("usage: set_link name on|off")),
        },
        "netdev_set_throttle" => {
            let args = crate::net_throttle::hmp_args(&rest)?;
            d.execute(peer, crate::net_throttle::SET, Some(&args))
                .map(|_| String::new())
        }
        "info" => match rest.as_slice() {
            [] => Ok(table(INFO_HELP)),
            [what] => info(d, peer, what),
            _ => Err(QmpError::generic(format!(
                "info: too many arguments ('{}')",
                rest.join(" ")
            ))),
        },
        other => Ok(format!("unknown command: '{other}'\n")),
    }
}

fn info(d: &mut Dispatcher, peer: &Peer, what: &str) -> Result<String, QmpError> {
    match what {
        "status" => {
            let v = d.execute(peer, "query-status", None)?;
            let running = v["running"].as_bool().unwrap_or(false);
            let status = v["status"].as_str().unwrap_or("unknown");
            Ok(if running {
                "VM status: running\n".to_string()
            } else if status == "paused" {
                "VM status: paused\n".to_string()
            } else {
                format!("VM status: paused ({status})\n")
            })
        }
        "version" => {
            let v = d.execute(peer, "query-version", None)?;
            let q = &v["qemu"];
            Ok(format!(
                "{}.{}.{} ({})\n",
                q["major"],
                q["minor"],
                q["micro"],
                v["package"].as_str().unwrap_or_default()
            ))
        }
        "name" => {
            let v = d.execute(peer, "query-name", None)?;
            Ok(match v.get("name").and_then(Value::as_str) {
                Some(n) => format!("{n}\n"),
                None => String::new(),
            })
        }
        "cpus" => {
            let v = d.execute(peer, "query-cpus-fast", None)?;
            let mut out = String::new();
            for (i, cpu) in v.as_array().into_iter().flatten().enumerate() {
                let mark = if i == 0 { '*' } else { ' ' };
                out.push_str(&format!(
                    "{mark} CPU #{}: thread_id={}\n",
                    cpu["cpu-index"], cpu["thread-id"]
                ));
            }
            Ok(out)
        }
        "block" => Ok(crate::block::info_block(&d.execute(
            peer,
            "query-block",
            None,
        )?)),
        "netdev_throttle" => Ok(crate::net_throttle::info_text(&d.execute(
            peer,
            crate::net_throttle::QUERY,
            None,
        )?)),
        "chardev" => {
            let v = d.execute(peer, "query-chardev", None)?;
            Ok(v.as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{}: filename={}\n",
                        c["label"].as_str().unwrap_or_default(),
                        c["filename"].as_str().unwrap_or_default()
                    )
                })
                .collect())
        }
        other => Ok(format!("unknown command: 'info {other}'\n")),
    }
}
