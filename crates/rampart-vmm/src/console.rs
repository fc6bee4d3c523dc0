//! The serial console's input side on the host: QEMU's `-nographic` escape keys.
//!
//! Ctrl-A is the escape: `Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends one Ctrl-A to the guest,
//! `Ctrl-A h` prints help; any other key after Ctrl-A is passed through with the Ctrl-A.

/// The escape byte (Ctrl-A).
pub const ESCAPE: u8 = 0x01;

/// Help printed for `Ctrl-A h`.
pub const HELP: &str =
    "\r\nC-a h    print this help\r\nC-a x    exit rampart\r\nC-a C-a  send C-a to the guest\r\n";

/// What the console asks of the VMM besides forwarding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAction {
    Quit,
    Help,
}

/// Splits terminal input into guest bytes and escape actions.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    /// Processes `input`, appending guest bytes to `to_guest`; returns the first action met
    /// (bytes after a Quit are dropped).
    pub fn feed(&mut self, input: &[u8], to_guest: &mut Vec<u8>) -> Option<ConsoleAction> {
        let mut action = None;
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => return Some(ConsoleAction::Quit),
                    b'h' | b'H' | b'?' => action = action.or(Some(ConsoleAction::Help)),
                    ESCAPE => to_guest.push(ESCAPE),
                    other => {
                        to_guest.push(ESCAPE);
                        to_guest.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.after_escape = true;
            } else {
                to_guest.push(b);
            }
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_plain_bytes_through() {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        assert_eq!(f.feed(b"ls -l\r", &mut out), None);
        assert_eq!(out, b"ls -l\r");
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        assert_eq!(f.feed(b"a\x01", &mut out), None);
        assert_eq!(f.feed(b"xyz", &mut out), Some(ConsoleAction::Quit));
        assert_eq!(out, b"a");
    }

    #[test]
    fn double_escape_sends_one_and_unknown_keys_pass_with_escape() {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        assert_eq!(f.feed(b"\x01\x01\x01c", &mut out), None);
        assert_eq!(out, b"\x01\x01c");
        out.clear();
        assert_eq!(f.feed(b"\x01h", &mut out), Some(ConsoleAction::Help));
        assert!(out.is_empty());
    }
}
