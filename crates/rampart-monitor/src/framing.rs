//! Splits a QMP byte stream into JSON texts, bounded in size and nesting depth.
//!
//! QMP messages are JSON values sent back to back (QEMU does not require newlines), so the
//! splitter tracks brackets and strings byte by byte. A message larger than the size limit or
//! nested deeper than the depth limit is dropped whole (its bytes are never stored) and reported
//! as one error; so is a stray closing bracket. The stream survives every error.

use thiserror::Error;

/// Largest accepted QMP message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;
/// Deepest accepted nesting of objects and arrays.
pub const MAX_DEPTH: usize = 64;

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("JSON message size limit exceeded (the limit is {MAX_MESSAGE_LEN} bytes)")]
    TooLarge,
    #[error("JSON nesting depth limit exceeded")]
    TooDeep,
    #[error("JSON parse error, unexpected closing bracket")]
    Unbalanced,
}

/// One unit the splitter found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The text of one complete JSON value (not yet parsed).
    Text(Vec<u8>),
    /// A dropped message.
    Error(FrameError),
}

/// The incremental splitter.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// A bare top-level scalar (number, literal) is being read.
    scalar: bool,
    /// The current message is being dropped for this reason.
    dropping: Option<FrameError>,
    max_len: usize,
    max_depth: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new(MAX_MESSAGE_LEN, MAX_DEPTH)
    }
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'{' | b'}' | b'[' | b']' | b'"' | b',' | b':')
}

impl Splitter {
    pub fn new(max_len: usize, max_depth: usize) -> Splitter {
        Splitter {
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escape: false,
            scalar: false,
            dropping: None,
            max_len,
            max_depth,
        }
    }

    /// Feeds bytes; every completed frame is appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        for &b in bytes {
            self.byte(b, out);
        }
    }

    fn push(&mut self, b: u8) {
        if self.dropping.is_some() {
            return;
        }
        if self.buf.len() >= self.max_len {
            self.dropping = Some(FrameError::TooLarge);
            self.buf = Vec::new();
            return;
        }
        self.buf.push(b);
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        self.scalar = false;
        match self.dropping.take() {
            Some(e) => out.push(Frame::Error(e)),
            None => out.push(Frame::Text(std::mem::take(&mut self.buf))),
        }
        self.buf.clear();
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.in_string {
            self.push(b);
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.depth == 0 {
                    self.finish(out);
                }
            }
            return;
        }
        if self.scalar {
            if !is_delimiter(b) {
                self.push(b);
                return;
            }
            self.finish(out);
            // The delimiter starts the next message (or is whitespace): fall through.
        }
        match b {
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > self.max_depth && self.dropping.is_none() {
                    self.dropping = Some(FrameError::TooDeep);
                    self.buf = Vec::new();
                }
                self.push(b);
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    out.push(Frame::Error(FrameError::Unbalanced));
                    return;
                }
                self.depth -= 1;
                self.push(b);
                if self.depth == 0 {
                    self.finish(out);
                }
            }
            b'"' => {
                self.in_string = true;
                self.push(b);
            }
            _ if self.depth == 0 && b.is_ascii_whitespace() => {}
            _ if self.depth == 0 => {
                self.scalar = true;
                self.push(b);
            }
            _ => self.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &Splitter, input: &[u8]) -> Vec<Frame> {
        let _ = s;
        let mut sp = Splitter::new(64, 4);
        let mut out = Vec::new();
        sp.feed(input, &mut out);
        out
    }

    fn text(s: &str) -> Frame {
        Frame::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_back_to_back_objects_without_newlines() {
        let sp = Splitter::default();
        let out = split(&sp, br#"{"a":1}{"b":"}"}  {"c":[1,{}]}"#);
        assert_eq!(
            out,
            vec![
                text(r#"{"a":1}"#),
                text(r#"{"b":"}"}"#),
                text(r#"{"c":[1,{}]}"#)
            ]
        );
    }

    #[test]
    fn reassembles_a_message_fed_byte_by_byte() {
        let mut sp = Splitter::default();
        let mut out = Vec::new();
        for b in br#"{"execute":"x\"}"}"# {
            sp.feed(&[*b], &mut out);
        }
        assert_eq!(out, vec![text(r#"{"execute":"x\"}"}"#)]);
    }

    #[test]
    fn top_level_scalars_are_frames_of_their_own() {
        let sp = Splitter::default();
        assert_eq!(
            split(&sp, b"\"abc\" 12 true{}"),
            vec![text("\"abc\""), text("12"), text("true"), text("{}")]
        );
    }

    #[test]
    fn oversized_message_is_dropped_and_the_stream_survives() {
        let sp = Splitter::default();
        let big = format!("{{\"a\":\"{}\"}}{{}}", "x".repeat(100));
        assert_eq!(
            split(&sp, big.as_bytes()),
            vec![Frame::Error(FrameError::TooLarge), text("{}")]
        );
    }

    #[test]
    fn too_deep_message_is_dropped_and_the_stream_survives() {
        let sp = Splitter::default();
        assert_eq!(
            split(&sp, b"[[[[[[]]]]]] [[]]"),
            vec![Frame::Error(FrameError::TooDeep), text("[[]]")]
        );
    }

    #[test]
    fn stray_closing_bracket_is_an_error() {
        let sp = Splitter::default();
        assert_eq!(
            split(&sp, b"} {}"),
            vec![Frame::Error(FrameError::Unbalanced), text("{}")]
        );
    }

    #[test]
    fn deep_input_never_grows_the_buffer_past_the_limit() {
        let mut sp = Splitter::new(64, 4);
        let mut out = Vec::new();
        sp.feed(&vec![b'['; 100_000], &mut out);
        assert!(sp.buf.len() <= 64);
        assert!(out.is_empty());
    }
}
