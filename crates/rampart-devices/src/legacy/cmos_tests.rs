use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::*;

/// 2024-02-29T23:59:59Z, a Thursday.
const LEAP_DAY_EVENING: i64 = 1_709_251_199;
const GIB: u64 = 1 << 30;

struct Harness {
    cmos: Cmos,
    host: Arc<AtomicI64>,
}

impl Harness {
    fn at(unix: i64) -> Self {
        Self::with_memory(unix, GIB, 0)
    }

    fn with_memory(unix: i64, below: u64, above: u64) -> Self {
        let host = Arc::new(AtomicI64::new(unix));
        let clock = host.clone();
        let cmos = Cmos::with_clock(below, above, Box::new(move || clock.load(Ordering::SeqCst)));
        Self { cmos, host }
    }

    fn advance(&self, secs: i64) {
        self.host.fetch_add(secs, Ordering::SeqCst);
    }

    fn read(&mut self, reg: u8) -> u8 {
        self.cmos.write(0, &[reg]);
        let mut b = [0u8];
        self.cmos.read(1, &mut b);
        b[0]
    }

    fn write(&mut self, reg: u8, value: u8) {
        self.cmos.write(0, &[reg]);
        self.cmos.write(1, &[value]);
    }

    /// (century, year, month, day, hour, minute, second) as raw register values.
    fn clock(&mut self) -> [u8; 7] {
        [
            self.read(REG_CENTURY),
            self.read(REG_YEAR),
            self.read(REG_MONTH),
            self.read(REG_DAY),
            self.read(REG_HOURS),
            self.read(REG_MINUTES),
            self.read(REG_SECONDS),
        ]
    }

    /// Sets the clock the way Linux does: SET, write the registers, clear SET.
    fn set_clock(&mut self, regs: [u8; 7]) {
        let b = self.read(REG_B);
        self.write(REG_B, b | B_SET);
        for (reg, value) in [
            REG_CENTURY,
            REG_YEAR,
            REG_MONTH,
            REG_DAY,
            REG_HOURS,
            REG_MINUTES,
            REG_SECONDS,
        ]
        .into_iter()
        .zip(regs)
        {
            self.write(reg, value);
        }
        self.write(REG_B, b & !B_SET);
    }
}

#[test]
fn reads_host_time_as_24_hour_bcd_by_default() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    let clock = h.clock();
    let weekday = h.read(REG_WEEKDAY);
    // Assert
    assert_eq!(clock, [0x20, 0x24, 0x02, 0x29, 0x23, 0x59, 0x59]);
    assert_eq!(weekday, 5, "Thursday, Sunday being 1");
    assert_eq!(h.read(REG_B), B_24H);
}

#[test]
fn reads_binary_when_status_b_selects_it() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    h.write(REG_B, B_24H | B_BINARY);
    // Assert
    assert_eq!(h.clock(), [20, 24, 2, 29, 23, 59, 59]);
}

#[test]
fn reads_twelve_hour_format_with_pm_flag() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    h.write(REG_B, 0);
    // Act
    let evening = h.read(REG_HOURS);
    h.advance(1); // 2024-03-01 00:00:00
    let midnight = h.read(REG_HOURS);
    h.advance(12 * 3600);
    let noon = h.read(REG_HOURS);
    h.write(REG_B, B_BINARY);
    let noon_binary = h.read(REG_HOURS);
    // Assert
    assert_eq!(evening, 0x80 | 0x11);
    assert_eq!(midnight, 0x12);
    assert_eq!(noon, 0x80 | 0x12);
    assert_eq!(noon_binary, 0x80 | 12);
}

#[test]
fn follows_host_time_across_a_leap_day() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    h.advance(1);
    // Assert
    assert_eq!(h.clock(), [0x20, 0x24, 0x03, 0x01, 0x00, 0x00, 0x00]);
}

#[test]
fn masks_the_nmi_disable_bit_off_the_index() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    let d = h.read(NMI_DISABLE | REG_D);
    let disabled = h.cmos.nmi_disabled();
    let seconds = h.read(REG_SECONDS);
    // Assert
    assert_eq!(d, D_VRT);
    assert!(disabled);
    assert!(!h.cmos.nmi_disabled());
    assert_eq!(seconds, 0x59);
}

#[test]
fn guest_set_clock_is_kept_as_an_offset_from_host_time() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    h.set_clock([0x19, 0x99, 0x12, 0x31, 0x23, 0x59, 0x50]);
    let right_after = h.clock();
    h.advance(15);
    let later = h.clock();
    // Assert
    assert_eq!(right_after, [0x19, 0x99, 0x12, 0x31, 0x23, 0x59, 0x50]);
    assert_eq!(later, [0x20, 0x00, 0x01, 0x01, 0x00, 0x00, 0x05]);
    assert_eq!(h.cmos.guest_offset(), 946_684_790 - LEAP_DAY_EVENING);
}

#[test]
fn time_is_frozen_while_set_bit_is_on() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    h.write(REG_B, B_24H | B_SET);
    // Act
    h.advance(100);
    let seconds = h.read(REG_SECONDS);
    // Assert
    assert_eq!(seconds, 0x59);
}

#[test]
fn single_register_write_changes_only_that_field() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    h.write(REG_MINUTES, 0x10);
    // Assert
    assert_eq!(h.clock(), [0x20, 0x24, 0x02, 0x29, 0x23, 0x10, 0x59]);
}

#[test]
fn sets_clock_in_binary_twelve_hour_mode() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    h.write(REG_B, B_BINARY);
    // Act: 2030-06-15 01:02:03 PM
    h.set_clock([20, 30, 6, 15, HOUR_PM | 1, 2, 3]);
    h.write(REG_B, B_24H);
    // Assert
    assert_eq!(h.clock(), [0x20, 0x30, 0x06, 0x15, 0x13, 0x02, 0x03]);
}

#[test]
fn ignores_garbage_bcd_and_impossible_dates() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    h.write(REG_SECONDS, 0xff);
    h.write(REG_MONTH, 0x13);
    h.write(REG_HOURS, 0x24);
    h.write(REG_CENTURY, 0xa0);
    h.set_clock([0x20, 0x23, 0x02, 0x29, 0x00, 0x00, 0x00]); // 2023 is not leap
    h.set_clock([0x20, 0x24, 0x00, 0x10, 0x00, 0x00, 0x00]);
    // Assert
    assert_eq!(h.cmos.guest_offset(), 0);
    assert_eq!(h.clock(), [0x20, 0x24, 0x02, 0x29, 0x23, 0x59, 0x59]);
}

#[test]
fn ignores_out_of_range_binary_and_twelve_hour_values() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    h.write(REG_B, B_BINARY);
    // Act
    h.write(REG_SECONDS, 200);
    h.write(REG_YEAR, 150);
    h.write(REG_HOURS, 0); // hour 0 does not exist on a 12-hour clock
    h.write(REG_HOURS, HOUR_PM | 13);
    // Assert
    assert_eq!(h.cmos.guest_offset(), 0);
}

#[test]
fn survives_extreme_host_clocks_and_offsets() {
    // Arrange
    let mut h = Harness::at(i64::MAX);
    // Act
    let far_future = h.clock();
    h.set_clock([0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00]);
    h.host.store(i64::MIN, Ordering::SeqCst);
    let far_past = h.clock();
    // Assert
    assert_eq!(far_future, [0x99, 0x99, 0x12, 0x31, 0x23, 0x59, 0x59]);
    assert_eq!(far_past[..4], [0x00, 0x00, 0x01, 0x01]);
}

#[test]
fn status_registers_behave_like_a_pc() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    // Act
    h.write(REG_A, 0xff);
    h.write(REG_C, 0xff);
    h.write(REG_D, 0x00);
    // Assert
    assert_eq!(h.read(REG_A) & A_UIP, 0, "never update-in-progress");
    assert_eq!(h.read(REG_C), 0);
    assert_eq!(h.read(REG_D), D_VRT);
}

#[test]
fn status_a_defaults_to_pc_divider_and_rate() {
    let mut h = Harness::at(0);
    assert_eq!(h.read(REG_A), 0x26);
}

#[test]
fn memory_registers_describe_ram() {
    // Arrange
    let mut h = Harness::with_memory(0, 3 * GIB, 2 * GIB);
    // Act
    let above_16m = u16::from_le_bytes([h.read(0x34), h.read(0x35)]);
    let above_4g = u32::from_le_bytes([h.read(0x5b), h.read(0x5c), h.read(0x5d), 0]);
    let base = u16::from_le_bytes([h.read(0x15), h.read(0x16)]);
    let ext = u16::from_le_bytes([h.read(0x17), h.read(0x18)]);
    // Assert
    assert_eq!(above_16m, ((3 * GIB - (16 << 20)) >> 16) as u16);
    assert_eq!(above_4g, ((2 * GIB) >> 16) as u32);
    assert_eq!(base, 640);
    assert_eq!(ext, 0xffff);
}

#[test]
fn memory_registers_are_capped_and_floored() {
    // Arrange
    let mut huge = Harness::with_memory(0, u64::MAX, u64::MAX);
    let mut tiny = Harness::with_memory(0, 8 << 20, 0);
    // Act
    let huge_16m = [huge.read(0x34), huge.read(0x35)];
    let huge_4g = [huge.read(0x5b), huge.read(0x5c), huge.read(0x5d)];
    let tiny_16m = [tiny.read(0x34), tiny.read(0x35)];
    let tiny_ext = u16::from_le_bytes([tiny.read(0x30), tiny.read(0x31)]);
    // Assert
    assert_eq!(huge_16m, [0xff, 0xff]);
    assert_eq!(huge_4g, [0xff, 0xff, 0xff]);
    assert_eq!(tiny_16m, [0, 0]);
    assert_eq!(tiny_ext, 7 * 1024);
}

#[test]
fn general_cmos_ram_keeps_guest_writes() {
    // Arrange
    let mut h = Harness::at(0);
    // Act
    h.write(0x40, 0xab);
    h.write(0x7f, 0xcd);
    // Assert
    assert_eq!(h.read(0x40), 0xab);
    assert_eq!(h.read(0xff), 0xcd, "index 0xff is 0x7f with NMI disabled");
}

#[test]
fn restored_state_keeps_guest_clock_and_ram() {
    // Arrange
    let mut original = Harness::at(LEAP_DAY_EVENING);
    original.set_clock([0x20, 0x30, 0x01, 0x02, 0x03, 0x04, 0x05]);
    original.write(0x50, 0x77);
    let state = original.cmos.state();
    let mut copy = Harness::at(LEAP_DAY_EVENING);
    // Act
    copy.cmos.restore(&state);
    // Assert
    assert_eq!(copy.clock(), [0x20, 0x30, 0x01, 0x02, 0x03, 0x04, 0x05]);
    assert_eq!(copy.read(0x50), 0x77);
}

#[test]
fn restore_accepts_hostile_state() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    let mut data = [0xff; CMOS_SIZE];
    data[usize::from(REG_B)] = B_BINARY | B_24H;
    let state = CmosState {
        index: 0xff,
        nmi_disabled: true,
        data,
        guest_offset: i64::MAX,
    };
    // Act
    h.cmos.restore(&state);
    let mut b = [0u8];
    h.cmos.read(1, &mut b);
    let clock = h.clock();
    // Assert
    assert_eq!(b, [0xff], "register 0x7f");
    assert_eq!(clock[0], 99, "binary, clamped to year 9999");
}

#[test]
fn hostile_accesses_do_not_panic() {
    // Arrange
    let mut h = Harness::at(LEAP_DAY_EVENING);
    let mut wide = [0u8; 8];
    let mut index = [0u8];
    // Act
    h.cmos.write(0, &[0x40, 0x41, 0x42, 0x43]);
    h.cmos.write(1, &[1; 8]);
    h.cmos.write(100, &[1]);
    h.cmos.write(u64::MAX, &[]);
    h.cmos.read(1, &mut wide);
    h.cmos.read(0, &mut index);
    h.cmos.read(u64::MAX, &mut wide[..1]);
    // Assert
    assert_eq!(wide, [0xff; 8]);
    assert_eq!(index, [0xff], "index port is write-only");
    assert_eq!(h.read(0x40), 0, "the wide writes changed nothing");
}
