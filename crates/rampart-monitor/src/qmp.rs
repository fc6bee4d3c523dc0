//! One QMP session: the greeting, capabilities negotiation, and `execute` messages.

use rampart_config::control::LifecycleEvent;
use serde_json::{json, Map, Value};

use crate::dispatch::{Dispatcher, Peer};
use crate::error::{ErrorClass, QmpError};
use crate::framing::Frame;

/// The state of one QMP connection.
#[derive(Debug)]
pub struct QmpSession {
    negotiated: bool,
    pretty: bool,
}

fn serialize(v: &Value, pretty: bool) -> Vec<u8> {
    let mut out = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    }
    .unwrap_or_default();
    out.push(b'\n');
    out
}

fn error_reply(e: &QmpError, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), e.to_json());
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// The JSON of one event with its timestamp.
pub fn event_json(ev: &LifecycleEvent, time: std::time::SystemTime) -> Value {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (name, data) = match ev {
        LifecycleEvent::Stop => ("STOP", None),
        LifecycleEvent::Resume => ("RESUME", None),
        LifecycleEvent::Powerdown => ("POWERDOWN", None),
        LifecycleEvent::Reset(cause) => (
            "RESET",
            Some(json!({"guest": cause.by_guest(), "reason": cause.name()})),
        ),
        LifecycleEvent::Shutdown(cause) => (
            "SHUTDOWN",
            Some(json!({"guest": cause.by_guest(), "reason": cause.name()})),
        ),
        LifecycleEvent::NicRxFilterChanged { name, path } => (
            "NIC_RX_FILTER_CHANGED",
            Some(match name {
                Some(n) => json!({"name": n, "path": path}),
                None => json!({"path": path}),
            }),
        ),
    };
    let mut m = Map::new();
    m.insert("event".into(), json!(name));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    m.insert(
        "timestamp".into(),
        json!({"seconds": since.as_secs(), "microseconds": since.subsec_micros()}),
    );
    Value::Object(m)
}

impl QmpSession {
    pub fn new(pretty: bool) -> QmpSession {
        QmpSession {
            negotiated: false,
            pretty,
        }
    }

    /// The greeting sent when a client connects.
    pub fn greeting(&self, d: &Dispatcher) -> Vec<u8> {
        let (a, b, c) = d.info().version;
        let g = json!({"QMP": {
            "version": {"qemu": {"micro": c, "minor": b, "major": a}, "package": d.info().package},
            "capabilities": [],
        }});
        serialize(&g, self.pretty)
    }

    /// An event for this client (none before negotiation completes, as QEMU).
    pub fn event(&self, ev: &Value) -> Option<Vec<u8>> {
        self.negotiated.then(|| serialize(ev, self.pretty))
    }

    /// Answers one frame.
    pub fn handle(&mut self, frame: Frame, d: &mut Dispatcher, peer: &Peer) -> Vec<u8> {
        let reply = match frame {
            Frame::Error(e) => error_reply(&QmpError::generic(e.to_string()), None),
            Frame::Text(text) => self.handle_text(&text, d, peer),
        };
        serialize(&reply, self.pretty)
    }

    fn handle_text(&mut self, text: &[u8], d: &mut Dispatcher, peer: &Peer) -> Value {
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => {
                return error_reply(&QmpError::generic(format!("JSON parse error, {e}")), None)
            }
        };
        let Value::Object(msg) = value else {
            return error_reply(&QmpError::generic("QMP input must be a JSON object"), None);
        };
        let id = msg.get("id");
        match self.execute(&msg, d, peer) {
            Ok(ret) => {
                let mut m = Map::new();
                m.insert("return".into(), ret);
                if let Some(id) = id {
                    m.insert("id".into(), id.clone());
                }
                Value::Object(m)
            }
            Err(e) => error_reply(&e, id),
        }
    }

    fn execute(
        &mut self,
        msg: &Map<String, Value>,
        d: &mut Dispatcher,
        peer: &Peer,
    ) -> Result<Value, QmpError> {
        if let Some(k) = msg
            .keys()
            .find(|k| !matches!(k.as_str(), "execute" | "arguments" | "id"))
        {
            return Err(QmpError::generic(format!(
                "QMP input member '{k}' is unexpected"
            )));
        }
        let name = match msg.get("execute") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(QmpError::generic(
                    "QMP input member 'execute' must be a string",
                ))
            }
            None => return Err(QmpError::generic("QMP input lacks member 'execute'")),
        };
        let args = msg.get("arguments");
        if let Some(a) = args {
            if !a.is_object() {
                return Err(QmpError::generic(
                    "QMP input member 'arguments' must be an object",
                ));
            }
        }
        if name == "qmp_capabilities" {
            if self.negotiated {
                return Err(QmpError::not_found(
                    "Capabilities negotiation is already complete, command ignored",
                ));
            }
            let def = crate::schema::command(name).expect("qmp_capabilities is in the schema");
            let args = crate::schema::validate_args(def.args, args)?;
            if let Some(Value::Array(caps)) = args.get("enable") {
                if let Some(c) = caps.first().and_then(Value::as_str) {
                    return Err(QmpError::generic(format!("Capability '{c}' not available")));
                }
            }
            self.negotiated = true;
            return Ok(json!({}));
        }
        if !self.negotiated {
            return Err(QmpError {
                class: ErrorClass::CommandNotFound,
                desc: "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
            });
        }
        d.execute(peer, name, args)
    }
}
