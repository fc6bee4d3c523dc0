//! QMP errors: QEMU's error classes and descriptions.

use serde_json::{json, Value};

/// QEMU's error classes (the ones rampart uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotFound,
    KVMMissingCap,
    /// rampart's own: the peer's authz rule does not include the command.
    PermissionDenied,
}

impl ErrorClass {
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
            ErrorClass::PermissionDenied => "PermissionDenied",
        }
    }
}

/// One QMP error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn not_found(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    /// The `{"class":…,"desc":…}` object.
    pub fn to_json(&self) -> Value {
        json!({"class": self.class.name(), "desc": self.desc})
    }
}
