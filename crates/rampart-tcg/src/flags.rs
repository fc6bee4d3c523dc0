//! RFLAGS with lazily computed arithmetic flags.
//!
//! Most instructions overwrite CF/PF/AF/ZF/SF/OF and the next instruction overwrites them again
//! without looking. So the common ALU operations only record *what* they did (operation kind,
//! operands, result, size) and the six arithmetic flags are materialized on demand. Everything
//! that is not an arithmetic flag (IF, DF, TF, ...) lives in `other`, always exact.

/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Reserved bit 1, always set.
pub const FIXED1: u64 = 1 << 1;
/// Parity flag.
pub const PF: u64 = 1 << 2;
/// Auxiliary (BCD) carry flag.
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Trap flag.
pub const TF: u64 = 1 << 8;
/// Interrupt enable flag.
pub const IF: u64 = 1 << 9;
/// Direction flag.
pub const DF: u64 = 1 << 10;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// I/O privilege level (2 bits).
pub const IOPL: u64 = 3 << 12;
/// Nested task.
pub const NT: u64 = 1 << 14;
/// Resume flag.
pub const RF: u64 = 1 << 16;
/// Virtual-8086 mode.
pub const VM: u64 = 1 << 17;
/// Alignment check.
pub const AC: u64 = 1 << 18;
/// Virtual interrupt flag.
pub const VIF: u64 = 1 << 19;
/// Virtual interrupt pending.
pub const VIP: u64 = 1 << 20;
/// CPUID-available flag.
pub const ID: u64 = 1 << 21;

/// The six arithmetic status flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
/// Every bit software can ever see set in RFLAGS.
pub const DEFINED: u64 = ARITH | FIXED1 | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;

/// The kind of the last flag-producing operation (one byte: translated code stores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LazyOp {
    /// The arithmetic flags in `Flags::other` are exact.
    Materialized,
    /// `res = a + b + carry`.
    Add,
    /// `res = a - b - carry` (also CMP and NEG with `a = 0`).
    Sub,
    /// AND/OR/XOR/TEST: CF=OF=0, AF=0, PF/ZF/SF from `res`.
    Logic,
    /// INC: like ADD of 1 but CF is preserved (kept in `carry`).
    Inc,
    /// DEC: like SUB of 1 but CF is preserved (kept in `carry`).
    Dec,
}

/// RFLAGS: exact non-arithmetic bits plus a lazily evaluated record of the last ALU operation.
///
/// `repr(C)`, so `op`, `size`, `carry` and a zero byte are one aligned 32-bit word that
/// translated code writes with one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Flags {
    other: u64,
    a: u64,
    b: u64,
    res: u64,
    op: LazyOp,
    size: u8,
    carry: bool,
    /// Always 0 (written with the three fields before it).
    zero: u8,
}

impl Default for Flags {
    fn default() -> Self {
        Self::from_bits(FIXED1)
    }
}

/// Mask of the low `size` bytes (size is 1, 2, 4 or 8).
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Sign bit of a `size`-byte value.
pub fn sign_bit(size: u8) -> u64 {
    match size {
        1 => 0x80,
        2 => 0x8000,
        4 => 0x8000_0000,
        _ => 1 << 63,
    }
}

/// PF is set when the low byte has an even number of one bits.
pub fn parity(v: u64) -> bool {
    (v as u8).count_ones() & 1 == 0
}

/// PF, ZF and SF for a `size`-byte result.
pub fn pzs(res: u64, size: u8) -> u64 {
    let r = res & size_mask(size);
    let mut f = 0;
    if parity(r) {
        f |= PF;
    }
    if r == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    f
}

const _: () = assert!(
    Flags::OFF_OP.is_multiple_of(4)
        && Flags::OFF_SIZE == Flags::OFF_OP + 1
        && Flags::OFF_CARRY == Flags::OFF_OP + 2
        && std::mem::offset_of!(Flags, zero) == Flags::OFF_OP + 3
);

impl Flags {
    /// Field offsets, for translated code that records operations (`crate::jit`).
    pub(crate) const OFF_OTHER: usize = std::mem::offset_of!(Flags, other);
    pub(crate) const OFF_OP: usize = std::mem::offset_of!(Flags, op);
    pub(crate) const OFF_SIZE: usize = std::mem::offset_of!(Flags, size);
    pub(crate) const OFF_A: usize = std::mem::offset_of!(Flags, a);
    pub(crate) const OFF_B: usize = std::mem::offset_of!(Flags, b);
    pub(crate) const OFF_RES: usize = std::mem::offset_of!(Flags, res);
    pub(crate) const OFF_CARRY: usize = std::mem::offset_of!(Flags, carry);
    /// The 32-bit word of `op` (low byte), `size`, `carry` and a zero byte.
    pub(crate) const OFF_OP_WORD: usize = Self::OFF_OP;

    /// Flags with every bit exact, from a raw RFLAGS value (reserved bits are normalized).
    pub fn from_bits(bits: u64) -> Self {
        Self {
            other: (bits & DEFINED) | FIXED1,
            op: LazyOp::Materialized,
            size: 8,
            a: 0,
            b: 0,
            res: 0,
            carry: false,
            zero: 0,
        }
    }

    /// The full architectural RFLAGS value.
    pub fn bits(&self) -> u64 {
        (self.other & !ARITH) | self.arith()
    }

    /// Replace the whole register (reserved bits are normalized).
    pub fn set_bits(&mut self, bits: u64) {
        *self = Self::from_bits(bits);
    }

    /// Only the six arithmetic flags, evaluated now.
    pub fn arith(&self) -> u64 {
        let size = self.size;
        let m = size_mask(size);
        let sb = sign_bit(size);
        let (a, b, r) = (self.a & m, self.b & m, self.res & m);
        match self.op {
            LazyOp::Materialized => self.other & ARITH,
            LazyOp::Logic => pzs(r, size),
            LazyOp::Add | LazyOp::Inc => {
                let mut f = pzs(r, size);
                let cf = match self.op {
                    LazyOp::Inc => self.carry,
                    _ => (a as u128 + b as u128 + self.carry as u128) > m as u128,
                };
                if cf {
                    f |= CF;
                }
                if (a ^ b ^ r) & 0x10 != 0 {
                    f |= AF;
                }
                if (a ^ r) & (b ^ r) & sb != 0 {
                    f |= OF;
                }
                f
            }
            LazyOp::Sub | LazyOp::Dec => {
                let mut f = pzs(r, size);
                let cf = match self.op {
                    LazyOp::Dec => self.carry,
                    _ => (a as u128) < (b as u128 + self.carry as u128),
                };
                if cf {
                    f |= CF;
                }
                if (a ^ b ^ r) & 0x10 != 0 {
                    f |= AF;
                }
                if (a ^ b) & (a ^ r) & sb != 0 {
                    f |= OF;
                }
                f
            }
        }
    }

    /// Whether `flag` (one of the constants above) is set.
    pub fn get(&self, flag: u64) -> bool {
        if flag & ARITH != 0 {
            self.arith() & flag != 0
        } else {
            self.other & flag != 0
        }
    }

    /// Set or clear individual flags; materializes the arithmetic flags first.
    pub fn set(&mut self, flag: u64, on: bool) {
        self.materialize();
        if on {
            self.other |= flag;
        } else {
            self.other &= !flag;
        }
    }

    /// Evaluate the lazy record into exact bits.
    pub fn materialize(&mut self) {
        if self.op != LazyOp::Materialized {
            let a = self.arith();
            self.other = (self.other & !ARITH) | a;
            self.op = LazyOp::Materialized;
        }
    }

    /// Overwrite exactly the arithmetic flags in `mask` with those in `value`.
    pub fn set_arith(&mut self, mask: u64, value: u64) {
        if mask & ARITH == ARITH {
            // All six replaced: the lazy record need not be evaluated first.
            self.other = (self.other & !ARITH) | (value & ARITH);
            self.op = LazyOp::Materialized;
            return;
        }
        self.materialize();
        let mask = mask & ARITH;
        self.other = (self.other & !mask) | (value & mask);
    }

    /// Record an ALU operation whose flags are computed lazily.
    pub fn record(&mut self, op: LazyOp, size: u8, a: u64, b: u64, res: u64, carry: bool) {
        let carry = match op {
            // INC/DEC keep CF: capture it before the record is replaced.
            LazyOp::Inc | LazyOp::Dec => self.get(CF),
            _ => carry,
        };
        self.op = op;
        self.size = size;
        self.a = a;
        self.b = b;
        self.res = res;
        self.carry = carry;
    }

    /// Evaluate a condition code (the low 4 bits of Jcc/SETcc/CMOVcc opcodes).
    #[inline]
    pub fn condition(&self, cc: u8) -> bool {
        match self.fast_condition(cc) {
            Some(r) => r,
            None => self.condition_from_bits(cc),
        }
    }

    /// The common cases straight from the lazy record, without computing all six flags:
    /// any condition but parity after ADD, CMP or SUB (without carry or borrow in) or a logic
    /// instruction, and ZF after any lazy operation. `None` for the rest.
    #[inline]
    fn fast_condition(&self, cc: u8) -> Option<bool> {
        let m = size_mask(self.size);
        let sb = sign_bit(self.size);
        let r = self.res & m;
        let v = match (self.op, cc >> 1) {
            (LazyOp::Materialized, _) => return None,
            (_, 2) => r == 0,
            (LazyOp::Sub, n) if !self.carry => {
                let (a, b) = (self.a & m, self.b & m);
                // Signed values: flipping the sign bit maps signed order onto unsigned order.
                let (sa, sb_) = (a ^ sb, b ^ sb);
                match n {
                    0 => (a ^ b) & (a ^ r) & sb != 0,
                    1 => a < b,
                    3 => a <= b,
                    4 => r & sb != 0,
                    6 => sa < sb_,
                    7 => sa <= sb_,
                    _ => return None,
                }
            }
            (LazyOp::Add, n) if !self.carry => {
                let (a, b) = (self.a & m, self.b & m);
                let cf = r < a;
                let of = (a ^ r) & (b ^ r) & sb != 0;
                let sf = r & sb != 0;
                match n {
                    0 => of,
                    1 => cf,
                    3 => cf || r == 0,
                    4 => sf,
                    6 => sf != of,
                    7 => r == 0 || sf != of,
                    _ => return None,
                }
            }
            (LazyOp::Logic, n) => match n {
                0 | 1 => false,
                3 => r == 0,
                4 | 6 => r & sb != 0,
                7 => r == 0 || r & sb != 0,
                _ => return None,
            },
            _ => return None,
        };
        Some(v ^ (cc & 1 != 0))
    }

    fn condition_from_bits(&self, cc: u8) -> bool {
        let f = self.arith();
        let cf = f & CF != 0;
        let zf = f & ZF != 0;
        let sf = f & SF != 0;
        let of = f & OF != 0;
        let pf = f & PF != 0;
        let r = match cc >> 1 {
            0 => of,
            1 => cf,
            2 => zf,
            3 => cf || zf,
            4 => sf,
            5 => pf,
            6 => sf != of,
            _ => zf || (sf != of),
        };
        r ^ (cc & 1 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_conditions_agree_with_the_computed_flags() {
        let mut rng = crate::testutil::Rng(0x0000_c0de_5eed);
        let ops = [
            LazyOp::Add,
            LazyOp::Sub,
            LazyOp::Logic,
            LazyOp::Inc,
            LazyOp::Dec,
        ];
        for n in 0..200_000u32 {
            let op = ops[n as usize % ops.len()];
            let size = [1u8, 2, 4, 8][(n / 5) as usize % 4];
            let mask = size_mask(size);
            // Small values too, so equal operands and sign boundaries come up.
            let pick = |x: u64| if x.is_multiple_of(3) { x % 4 } else { x };
            let (a, b) = (pick(rng.next()) & mask, pick(rng.next()) & mask);
            let carry = rng.next().is_multiple_of(4);
            let res = match op {
                LazyOp::Add | LazyOp::Inc => a.wrapping_add(b).wrapping_add(carry as u64),
                LazyOp::Sub | LazyOp::Dec => a.wrapping_sub(b).wrapping_sub(carry as u64),
                _ => a & b,
            } & mask;
            let mut f = Flags::default();
            f.record(op, size, a, b, res, carry);
            for cc in 0..16 {
                assert_eq!(
                    f.condition(cc),
                    f.condition_from_bits(cc),
                    "{op:?} size {size} a {a:#x} b {b:#x} carry {carry} cc {cc}"
                );
            }
        }
    }

    #[test]
    fn add_overflow_sets_of_and_sf_not_cf() {
        let mut f = Flags::default();
        f.record(LazyOp::Add, 1, 0x7f, 1, 0x80, false);
        assert_eq!(f.arith(), OF | SF | AF);
    }

    #[test]
    fn sub_borrow_sets_cf() {
        let mut f = Flags::default();
        f.record(LazyOp::Sub, 4, 0, 1, 0xffff_ffff, false);
        assert_eq!(f.arith(), CF | SF | AF | PF);
    }

    #[test]
    fn inc_preserves_previous_carry() {
        let mut f = Flags::from_bits(CF);
        f.record(LazyOp::Inc, 8, 0xffff_ffff_ffff_ffff, 1, 0, false);
        assert_eq!(f.arith(), CF | ZF | PF | AF);
    }

    #[test]
    fn reserved_bits_are_normalized() {
        let f = Flags::from_bits(u64::MAX);
        assert_eq!(f.bits(), DEFINED);
        assert_eq!(Flags::from_bits(0).bits(), FIXED1);
    }

    #[test]
    fn conditions_follow_signed_compare() {
        let mut f = Flags::default();
        // cmp -1, 1 (as i8): less, below is false (0xff > 1 unsigned).
        f.record(LazyOp::Sub, 1, 0xff, 1, 0xfe, false);
        assert!(f.condition(0xc)); // L
        assert!(!f.condition(0x2)); // B
        assert!(f.condition(0x7)); // A
    }
}
