//! `bzimage_header`: the setup-header parser on a hostile file.
//!
//! The input is a whole kernel file. Checks, beyond "returns Ok or Err":
//! - the loader only reads the first 4 KiB (`head`) and passes the real file length: parsing
//!   that head must give the same answer as parsing the whole file;
//! - an accepted header places a non-empty payload inside the file, after the setup sectors.

use rampart_vmm::arch::x86_64::bzimage::{cmdline_limit, initrd_addr_max, parse_setup_header};

/// How much of the file the loader hands the parser.
const HEAD_LEN: usize = 0x1000;

pub fn run(data: &[u8]) {
    let len = data.len() as u64;
    let whole = parse_setup_header(data, len);
    let head = parse_setup_header(&data[..data.len().min(HEAD_LEN)], len);
    match (&whole, &head) {
        (Ok(a), Ok(b)) => assert_eq!(
            (a.payload_offset, a.payload_length),
            (b.payload_offset, b.payload_length),
            "the first 4 KiB and the whole file locate the payload differently"
        ),
        (Err(a), Err(b)) => assert_eq!(a, b, "the first 4 KiB and the whole file disagree"),
        _ => panic!("the first 4 KiB and the whole file disagree: {whole:?} vs {head:?}"),
    }
    let Ok(info) = whole else { return };
    let end = info.payload_offset.checked_add(info.payload_length);
    assert!(
        info.payload_length > 0 && end.is_some_and(|e| e <= len),
        "accepted a payload at {:#x}+{:#x} outside the {len}-byte file",
        info.payload_offset,
        info.payload_length
    );
    assert!(
        info.payload_offset >= 1024,
        "accepted a payload at {:#x}, inside the boot sector or setup",
        info.payload_offset
    );
    // Derived values must not panic either.
    std::hint::black_box((cmdline_limit(&info.header), initrd_addr_max(&info.header)));
}
