//! HMP line editing for a monitor on a terminal (`-monitor stdio` on a TTY in raw mode): key
//! bytes in, echo bytes and finished lines out. Pure logic, no I/O.
//!
//! Keys: printable characters insert at the cursor; Backspace (0x7f, ^H) deletes before it,
//! Delete (`ESC [ 3 ~`) under it; Left/Right (`ESC [ D`/`C`, ^B/^F) move; Home/End (`ESC [ H`/
//! `F`, `ESC O H`/`F`, `ESC [ 1 ~`/`4 ~`, ^A/^E); ^U deletes to the start of the line; ^K to
//! its end; Up/Down (`ESC [ A`/`B`, ^P/^N) walk the history; Enter (CR or LF) finishes the
//! line. Other control bytes and unknown escape sequences are ignored. The line is bounded by
//! `max_line`, the history by [`HISTORY_LEN`] entries, an escape sequence by
//! [`MAX_ESCAPE`] bytes.

use std::collections::VecDeque;

/// Lines kept in the history.
pub const HISTORY_LEN: usize = 64;
/// Longest escape sequence kept; longer ones are dropped.
pub const MAX_ESCAPE: usize = 8;

const ESC: u8 = 0x1b;

/// What one fed byte produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Feed {
    /// Bytes to write to the terminal (echo, cursor movement, redraws).
    pub echo: Vec<u8>,
    /// A finished line, without its line end.
    pub line: Option<String>,
}

/// One terminal's editing state.
#[derive(Debug)]
pub struct LineEditor {
    prompt: String,
    max_line: usize,
    buf: Vec<u8>,
    cursor: usize,
    history: VecDeque<Vec<u8>>,
    /// Position while walking the history (`history.len()` = the line being edited).
    hist_pos: usize,
    /// The line being edited, kept while walking the history.
    draft: Vec<u8>,
    escape: Option<Vec<u8>>,
    /// The previous byte was CR (a following LF is the same Enter).
    after_cr: bool,
}

impl LineEditor {
    pub fn new(prompt: &str, max_line: usize) -> LineEditor {
        LineEditor {
            prompt: prompt.to_string(),
            max_line,
            buf: Vec::new(),
            cursor: 0,
            history: VecDeque::new(),
            hist_pos: 0,
            draft: Vec::new(),
            escape: None,
            after_cr: false,
        }
    }

    /// Feeds every byte of `bytes`; returns the echo and the lines finished, in order.
    pub fn feed_all(&mut self, bytes: &[u8]) -> (Vec<u8>, Vec<String>) {
        let mut echo = Vec::new();
        let mut lines = Vec::new();
        for &b in bytes {
            let f = self.feed(b);
            echo.extend_from_slice(&f.echo);
            lines.extend(f.line);
        }
        (echo, lines)
    }

    /// Feeds one byte.
    pub fn feed(&mut self, b: u8) -> Feed {
        let mut out = Feed::default();
        let after_cr = std::mem::take(&mut self.after_cr);
        if let Some(seq) = self.escape.as_mut() {
            seq.push(b);
            let done = seq.len() >= 2 && (seq[0] != b'[' || b.is_ascii_alphabetic() || b == b'~')
                || seq.len() >= MAX_ESCAPE;
            if seq.len() == 1 && b != b'[' && b != b'O' {
                // ESC followed by something else: not a sequence we know.
                self.escape = None;
            } else if done {
                let seq = self.escape.take().unwrap_or_default();
                self.escape_sequence(&seq, &mut out);
            }
            return out;
        }
        match b {
            ESC => self.escape = Some(Vec::new()),
            b'\r' | b'\n' => {
                if b == b'\n' && after_cr {
                    return out;
                }
                self.after_cr = b == b'\r';
                out.echo.extend_from_slice(b"\r\n");
                let line = std::mem::take(&mut self.buf);
                self.cursor = 0;
                self.draft.clear();
                if !line.iter().all(u8::is_ascii_whitespace) && self.history.back() != Some(&line) {
                    if self.history.len() == HISTORY_LEN {
                        self.history.pop_front();
                    }
                    self.history.push_back(line.clone());
                }
                self.hist_pos = self.history.len();
                out.line = Some(String::from_utf8_lossy(&line).into_owned());
            }
            0x7f | 0x08 if self.cursor > 0 => {
                self.cursor -= 1;
                self.buf.remove(self.cursor);
                self.redraw(&mut out);
            }
            0x01 => self.move_to(0, &mut out),
            0x05 => self.move_to(self.buf.len(), &mut out),
            0x02 => self.move_to(self.cursor.saturating_sub(1), &mut out),
            0x06 => self.move_to((self.cursor + 1).min(self.buf.len()), &mut out),
            0x15 => {
                self.buf.drain(..self.cursor);
                self.cursor = 0;
                self.redraw(&mut out);
            }
            0x0b => {
                self.buf.truncate(self.cursor);
                self.redraw(&mut out);
            }
            0x10 => self.history_step(-1, &mut out),
            0x0e => self.history_step(1, &mut out),
            0x20..=0x7e | 0x80..=0xff if self.buf.len() < self.max_line => {
                self.buf.insert(self.cursor, b);
                self.cursor += 1;
                if self.cursor == self.buf.len() {
                    out.echo.push(b);
                } else {
                    self.redraw(&mut out);
                }
            }
            _ => {}
        }
        out
    }

    fn escape_sequence(&mut self, seq: &[u8], out: &mut Feed) {
        match seq {
            b"[D" | b"OD" => self.move_to(self.cursor.saturating_sub(1), out),
            b"[C" | b"OC" => self.move_to((self.cursor + 1).min(self.buf.len()), out),
            b"[H" | b"OH" | b"[1~" | b"[7~" => self.move_to(0, out),
            b"[F" | b"OF" | b"[4~" | b"[8~" => self.move_to(self.buf.len(), out),
            b"[A" | b"OA" => self.history_step(-1, out),
            b"[B" | b"OB" => self.history_step(1, out),
            b"[3~" if self.cursor < self.buf.len() => {
                self.buf.remove(self.cursor);
                self.redraw(out);
            }
            _ => {}
        }
    }

    fn move_to(&mut self, pos: usize, out: &mut Feed) {
        if pos < self.cursor {
            out.echo
                .extend_from_slice(format!("\x1b[{}D", self.cursor - pos).as_bytes());
        } else if pos > self.cursor {
            out.echo
                .extend_from_slice(format!("\x1b[{}C", pos - self.cursor).as_bytes());
        }
        self.cursor = pos;
    }

    fn history_step(&mut self, dir: isize, out: &mut Feed) {
        let len = self.history.len();
        let pos = match dir {
            -1 if self.hist_pos > 0 => self.hist_pos - 1,
            1 if self.hist_pos < len => self.hist_pos + 1,
            _ => return,
        };
        if self.hist_pos == len {
            self.draft = self.buf.clone();
        }
        self.hist_pos = pos;
        self.buf = if pos == len {
            std::mem::take(&mut self.draft)
        } else {
            self.history[pos].clone()
        };
        self.cursor = self.buf.len();
        self.redraw(out);
    }

    /// Rewrites the whole line: carriage return, prompt, text, clear to the end, cursor back.
    fn redraw(&self, out: &mut Feed) {
        out.echo.push(b'\r');
        out.echo.extend_from_slice(self.prompt.as_bytes());
        out.echo.extend_from_slice(&self.buf);
        out.echo.extend_from_slice(b"\x1b[K");
        let back = self.buf.len() - self.cursor;
        if back > 0 {
            out.echo
                .extend_from_slice(format!("\x1b[{back}D").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed() -> LineEditor {
        LineEditor::new("(qemu) ", 32)
    }

    fn lines(e: &mut LineEditor, input: &[u8]) -> Vec<String> {
        e.feed_all(input).1
    }

    #[test]
    fn printable_characters_are_echoed_and_enter_finishes_the_line() {
        let mut e = ed();
        let (echo, l) = e.feed_all(b"info status\r");
        assert_eq!(l, ["info status"]);
        assert_eq!(echo, b"info status\r\n");
        // CR LF is one Enter; a lone LF is one too.
        assert_eq!(lines(&mut e, b"stop\r\ncont\n"), ["stop", "cont"]);
    }

    #[test]
    fn backspace_deletes_before_the_cursor_and_redraws() {
        let mut e = ed();
        let (echo, l) = e.feed_all(b"stpo\x7f\x7fop\r");
        assert_eq!(l, ["stop"]);
        assert!(echo.starts_with(b"stpo\r(qemu) stp\x1b[K"), "{echo:?}");
        assert_eq!(lines(&mut e, b"\x08\x08x\r"), ["x"]);
    }

    #[test]
    fn left_right_home_end_move_and_inserts_land_at_the_cursor() {
        let mut e = ed();
        assert_eq!(lines(&mut e, b"ifo\x1b[D\x1b[Dn\r"), ["info"]);
        assert_eq!(lines(&mut e, b"nfo\x01i\x05 block\r"), ["info block"]);
        assert_eq!(lines(&mut e, b"top\x1b[Hs\x1b[F!\r"), ["stop!"]);
        assert_eq!(lines(&mut e, b"ab\x1bOHx\x1b[4~y\r"), ["xaby"]);
        assert_eq!(lines(&mut e, b"ac\x02b\x06d\r"), ["abcd"]);
        // Moving never passes the ends.
        assert_eq!(
            lines(&mut e, b"a\x1b[D\x1b[D\x1b[Db\x1b[C\x1b[C\x1b[Cc\r"),
            ["bac"]
        );
    }

    #[test]
    fn cursor_moves_are_echoed_as_terminal_sequences() {
        let mut e = ed();
        let (echo, _) = e.feed_all(b"abc\x1b[D\x1b[D");
        assert_eq!(echo, b"abc\x1b[1D\x1b[1D");
        let (echo, _) = e.feed_all(b"\x05");
        assert_eq!(echo, b"\x1b[2C");
    }

    #[test]
    fn ctrl_u_deletes_to_the_start_and_ctrl_k_to_the_end_and_delete_under_the_cursor() {
        let mut e = ed();
        assert_eq!(lines(&mut e, b"garbage\x15stop\r"), ["stop"]);
        assert_eq!(lines(&mut e, b"stopxyz\x1b[D\x1b[D\x1b[D\x0b\r"), ["stop"]);
        assert_eq!(lines(&mut e, b"stxop\x1b[D\x1b[D\x1b[D\x1b[3~\r"), ["stop"]);
    }

    #[test]
    fn history_walks_up_and_down_and_keeps_the_draft() {
        let mut e = ed();
        lines(&mut e, b"info status\r");
        lines(&mut e, b"stop\r");
        lines(&mut e, b"stop\r"); // repeated lines are kept once
        lines(&mut e, b"\r"); // empty lines are not kept
        assert_eq!(lines(&mut e, b"\x1b[A\r"), ["stop"]);
        assert_eq!(lines(&mut e, b"\x1b[A\x1b[A\r"), ["info status"]);
        assert_eq!(lines(&mut e, b"dr\x1b[A\x1b[B\x1b[Baft\r"), ["draft"]);
        // Up past the oldest entry stays there; ^P/^N work too.
        assert_eq!(lines(&mut e, b"\x10\x10\x10\x10\x0e\r"), ["stop"]);
        let (echo, _) = e.feed_all(b"\x1b[A");
        assert_eq!(echo, b"\r(qemu) stop\x1b[K");
    }

    #[test]
    fn history_is_bounded() {
        let mut e = ed();
        for i in 0..HISTORY_LEN + 10 {
            lines(&mut e, format!("c{i}\r").as_bytes());
        }
        let mut up = Vec::new();
        up.resize(HISTORY_LEN + 20, 0x10);
        up.push(b'\r');
        assert_eq!(lines(&mut e, &up), ["c10"]);
    }

    #[test]
    fn the_line_is_bounded_and_control_bytes_and_unknown_escapes_are_ignored() {
        let mut e = ed();
        let long = vec![b'a'; 100];
        let l = lines(&mut e, &[long.as_slice(), b"\r"].concat());
        assert_eq!(l[0].len(), 32);
        assert_eq!(lines(&mut e, b"s\x00\x07\x1b[99Zt\x1bxop\r"), ["stop"]);
        // An endless escape sequence is dropped after MAX_ESCAPE bytes.
        let l = lines(&mut e, b"\x1b[1111111111111111q\r");
        assert_eq!(l.len(), 1);
    }
}
