//! A small exact soft-float core shared by SSE and x87: IEEE 754 binary32, binary64 and the x87
//! 80-bit extended format, with all four rounding modes, tininess detected after rounding (as
//! x86 does), flush-to-zero, and the exception flags in MXCSR bit order.
//!
//! Values are unpacked into an integer significand and a power of two (`sig * 2^exp`), computed
//! exactly in `u128` (with a sticky bit where a quotient or root does not terminate) and rounded
//! once by [`round_pack`]. Pure functions: no CPU state, no panics (all shifts are bounded).

/// Invalid operation.
pub(crate) const IE: u32 = 0x01;
/// Denormal operand.
pub(crate) const DE: u32 = 0x02;
/// Divide by zero.
pub(crate) const ZE: u32 = 0x04;
/// Overflow.
pub(crate) const OE: u32 = 0x08;
/// Underflow.
pub(crate) const UE: u32 = 0x10;
/// Precision (inexact).
pub(crate) const PE: u32 = 0x20;
/// Internal: the result was tiny (before any flush), so an unmasked UE can be raised even when
/// the result is exact. Never stored in MXCSR.
pub(crate) const TINY: u32 = 0x1_0000;

/// Internal: the magnitude was rounded up (x87 reports it in FSW.C1). Never stored in MXCSR.
pub(crate) const UP: u32 = 0x2_0000;

/// Rounding control (MXCSR.RC and FCW.RC share the encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    Nearest,
    Down,
    Up,
    Zero,
}

impl Round {
    /// From the two-bit RC field.
    pub(crate) fn from_rc(rc: u32) -> Round {
        match rc & 3 {
            0 => Round::Nearest,
            1 => Round::Down,
            2 => Round::Up,
            _ => Round::Zero,
        }
    }
}

/// A binary floating-point format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fmt {
    /// Stored fraction bits (for the 80-bit format including the explicit integer bit).
    frac: u32,
    exp_bits: u32,
    explicit_int: bool,
}

/// binary32.
pub(crate) const F32: Fmt = Fmt {
    frac: 23,
    exp_bits: 8,
    explicit_int: false,
};
/// binary64.
pub(crate) const F64: Fmt = Fmt {
    frac: 52,
    exp_bits: 11,
    explicit_int: false,
};
/// x87 double-extended (64-bit significand with explicit integer bit).
pub(crate) const F80: Fmt = Fmt {
    frac: 64,
    exp_bits: 15,
    explicit_int: true,
};

impl Fmt {
    /// Significand precision in bits.
    fn prec(self) -> i32 {
        if self.explicit_int {
            self.frac as i32
        } else {
            self.frac as i32 + 1
        }
    }
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }
    fn sign_bit(self) -> u128 {
        1u128 << (self.frac + self.exp_bits)
    }
    fn exp_max_field(self) -> u128 {
        (1u128 << self.exp_bits) - 1
    }
    fn frac_mask(self) -> u128 {
        (1u128 << self.frac) - 1
    }
    /// Quiet bit of a NaN.
    fn quiet_bit(self) -> u128 {
        1u128 << (self.prec() - 2)
    }
    /// Total width in bits.
    pub(crate) fn width(self) -> u32 {
        self.frac + self.exp_bits + 1
    }
    /// Mask of all bits of the format.
    pub(crate) fn mask(self) -> u128 {
        (self.sign_bit() << 1).wrapping_sub(1)
    }
    /// Positive or negative infinity.
    pub(crate) fn inf(self, sign: bool) -> u128 {
        let int = if self.explicit_int {
            1u128 << (self.frac - 1)
        } else {
            0
        };
        self.sign(sign) | (self.exp_max_field() << self.frac) | int
    }
    /// Largest finite value.
    fn max_finite(self, sign: bool) -> u128 {
        self.sign(sign) | ((self.exp_max_field() - 1) << self.frac) | self.frac_mask()
    }
    /// The "real indefinite" QNaN (negative, quiet bit only).
    pub(crate) fn default_nan(self) -> u128 {
        self.inf(true) | self.quiet_bit()
    }
    /// Signed zero.
    pub(crate) fn zero(self, sign: bool) -> u128 {
        self.sign(sign)
    }
    fn sign(self, sign: bool) -> u128 {
        if sign {
            self.sign_bit()
        } else {
            0
        }
    }
    /// A NaN with its quiet bit set.
    pub(crate) fn quiet(self, bits: u128) -> u128 {
        bits | self.quiet_bit()
    }
}

/// What a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Zero,
    Denormal,
    Normal,
    Inf,
    QNan,
    SNan,
}

/// An unpacked value: `(-1)^sign * sig * 2^exp` (for zeros and finite values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unpacked {
    pub class: Class,
    pub sign: bool,
    pub exp: i32,
    pub sig: u128,
}

impl Unpacked {
    pub(crate) fn is_nan(&self) -> bool {
        matches!(self.class, Class::QNan | Class::SNan)
    }
    pub(crate) fn is_finite(&self) -> bool {
        matches!(self.class, Class::Zero | Class::Denormal | Class::Normal)
    }
}

/// Unpack `bits` of format `f`. For the 80-bit format, unnormals and pseudo-NaN/infinities
/// (integer bit clear with a non-zero exponent) are reported as signalling NaNs, so that they
/// raise invalid as modern x87 units do.
pub(crate) fn unpack(f: Fmt, bits: u128) -> Unpacked {
    let bits = bits & f.mask();
    let sign = bits & f.sign_bit() != 0;
    let field = (bits >> f.frac) & f.exp_max_field();
    let frac = bits & f.frac_mask();
    let bias = f.bias();
    let shift = f.prec() - 1;
    let mk = |class, exp, sig| Unpacked {
        class,
        sign,
        exp,
        sig,
    };
    if field == f.exp_max_field() {
        let payload = if f.explicit_int {
            if frac >> (f.frac - 1) == 0 {
                return mk(Class::SNan, 0, 0);
            }
            frac & (f.frac_mask() >> 1)
        } else {
            frac
        };
        return if payload == 0 {
            mk(Class::Inf, 0, 0)
        } else if payload & f.quiet_bit() != 0 {
            mk(Class::QNan, 0, 0)
        } else {
            mk(Class::SNan, 0, 0)
        };
    }
    if field == 0 {
        if frac == 0 {
            return mk(Class::Zero, 0, 0);
        }
        return mk(Class::Denormal, 1 - bias - shift, frac);
    }
    if f.explicit_int {
        if frac >> (f.frac - 1) == 0 {
            return mk(Class::SNan, 0, 0); // unnormal
        }
        return mk(Class::Normal, field as i32 - bias - shift, frac);
    }
    mk(
        Class::Normal,
        field as i32 - bias - shift,
        frac | (1u128 << f.frac),
    )
}

/// Shift `sig` right by `s` (left when `s <= 0`) and round to an integer with `rc`.
/// `sticky` means the exact value is a little larger in magnitude than `sig`.
/// Returns (rounded, inexact).
fn shift_round(sig: u128, sticky: bool, s: i32, sign: bool, rc: Round) -> (u128, bool) {
    let (kept, round, rest) = if s <= 0 {
        let l = (-s) as u32;
        let v = if l >= 128 { 0 } else { sig << l };
        (v, false, sticky)
    } else if s >= 129 {
        (0, false, sig != 0 || sticky)
    } else if s == 128 {
        (0, sig >> 127 != 0, sig & !(1u128 << 127) != 0 || sticky)
    } else {
        let s = s as u32;
        let below = sig & ((1u128 << (s - 1)) - 1);
        (sig >> s, (sig >> (s - 1)) & 1 != 0, below != 0 || sticky)
    };
    let inexact = round || rest;
    let up = match rc {
        Round::Nearest => round && (rest || kept & 1 != 0),
        Round::Zero => false,
        Round::Up => inexact && !sign,
        Round::Down => inexact && sign,
    };
    (kept + up as u128, inexact)
}

fn bit_len(v: u128) -> i32 {
    128 - v.leading_zeros() as i32
}

/// Round `(-1)^sign * (sig + sticky) * 2^exp` to format `f`. `ftz` flushes tiny results to zero
/// (pass MXCSR.FTZ && MXCSR.UM). Returns the packed bits and the flags raised (OE, UE, PE, TINY).
pub(crate) fn round_pack(
    f: Fmt,
    sign: bool,
    exp: i32,
    sig: u128,
    sticky: bool,
    rc: Round,
    ftz: bool,
) -> (u128, u32) {
    if sig == 0 && !sticky {
        return (f.zero(sign), 0);
    }
    let p = f.prec();
    let bias = f.bias();
    let emin = 1 - bias;
    let n = bit_len(sig).max(1);
    let e = exp + n - 1;
    let q = e.max(emin) - (p - 1);
    let (mut m, inexact) = shift_round(sig, sticky, q - exp, sign, rc);
    let (truncated, _) = shift_round(sig, sticky, q - exp, sign, Round::Zero);
    let up = if m > truncated { UP } else { 0 };
    let mut q = q;
    if m >> p != 0 {
        m >>= 1;
        q += 1;
    }
    // Tininess after rounding: round with an unbounded exponent range and check the magnitude.
    let tiny = e < emin && {
        let (mu, _) = shift_round(sig, sticky, e - (p - 1) - exp, sign, rc);
        !(mu >> p != 0 && e + 1 >= emin)
    };
    let mut flags = 0;
    if tiny {
        flags |= TINY;
        if ftz {
            return (f.zero(sign), flags | UE | PE);
        }
        if inexact {
            flags |= UE;
        }
    }
    if inexact {
        flags |= PE | up;
    }
    if m == 0 {
        return (f.zero(sign), flags);
    }
    let normal = m >> (p - 1) != 0;
    let e_res = q + p - 1;
    if normal && e_res > bias {
        let to_inf = match rc {
            Round::Nearest => true,
            Round::Zero => false,
            Round::Up => !sign,
            Round::Down => sign,
        };
        let bits = if to_inf {
            f.inf(sign)
        } else {
            f.max_finite(sign)
        };
        return (bits, OE | PE | if to_inf { UP } else { 0 });
    }
    let field = if normal { (e_res + bias) as u128 } else { 0 };
    let frac = if f.explicit_int { m } else { m & f.frac_mask() };
    (f.sign(sign) | (field << f.frac) | frac, flags)
}

/// Normalize a non-zero significand so its top bit is at `top` (returns the shifted pair).
fn norm_to(sig: u128, exp: i32, top: i32) -> (u128, i32) {
    let n = bit_len(sig);
    let d = top - (n - 1);
    if d >= 0 {
        (sig << d as u32, exp - d)
    } else {
        let d = (-d) as u32;
        let lost = sig & ((1u128 << d) - 1) != 0;
        ((sig >> d) | lost as u128, exp + d as i32)
    }
}

/// Exact sum of two finite values (zeros included), rounded to `f`.
pub(crate) fn add(f: Fmt, a: Unpacked, b: Unpacked, rc: Round, ftz: bool) -> (u128, u32) {
    if a.sig == 0 && b.sig == 0 {
        let sign = if a.sign == b.sign {
            a.sign
        } else {
            rc == Round::Down
        };
        return (f.zero(sign), 0);
    }
    if a.sig == 0 {
        return round_pack(f, b.sign, b.exp, b.sig, false, rc, ftz);
    }
    if b.sig == 0 {
        return round_pack(f, a.sign, a.exp, a.sig, false, rc, ftz);
    }
    let (sa, ea) = norm_to(a.sig, a.exp, 120);
    let (sb, eb) = norm_to(b.sig, b.exp, 120);
    // Make `x` the operand with the larger exponent and align `y` to it, jamming lost bits.
    let ((sx, ex, gx), (sy, ey, gy)) = if ea >= eb {
        ((sa, ea, a.sign), (sb, eb, b.sign))
    } else {
        ((sb, eb, b.sign), (sa, ea, a.sign))
    };
    let d = (ex - ey) as u32;
    let sy = if d >= 122 {
        1
    } else {
        (sy >> d) | (sy & ((1u128 << d) - 1) != 0) as u128
    };
    if gx == gy {
        return round_pack(f, gx, ex, sx + sy, false, rc, ftz);
    }
    if sx == sy {
        return (f.zero(rc == Round::Down), 0);
    }
    let (mag, sign) = if sx > sy {
        (sx - sy, gx)
    } else {
        (sy - sx, gy)
    };
    round_pack(f, sign, ex, mag, false, rc, ftz)
}

/// Exact product of two finite values, rounded to `f`.
pub(crate) fn mul(f: Fmt, a: Unpacked, b: Unpacked, rc: Round, ftz: bool) -> (u128, u32) {
    let sign = a.sign != b.sign;
    if a.sig == 0 || b.sig == 0 {
        return (f.zero(sign), 0);
    }
    let (sa, ea) = norm_to(a.sig, a.exp, 63);
    let (sb, eb) = norm_to(b.sig, b.exp, 63);
    round_pack(f, sign, ea + eb, sa * sb, false, rc, ftz)
}

/// Quotient of two finite values, `b` non-zero, rounded to `f`.
pub(crate) fn div(f: Fmt, a: Unpacked, b: Unpacked, rc: Round, ftz: bool) -> (u128, u32) {
    let sign = a.sign != b.sign;
    if a.sig == 0 || b.sig == 0 {
        return (f.zero(sign), 0);
    }
    let (sa, ea) = norm_to(a.sig, a.exp, 127);
    let (sb, eb) = norm_to(b.sig, b.exp, 63);
    let q1 = sa / sb;
    let r1 = sa % sb;
    let q = (q1 << 8) | ((r1 << 8) / sb);
    let r2 = (r1 << 8) % sb;
    round_pack(f, sign, ea - eb - 8, q, r2 != 0, rc, ftz)
}

/// Integer square root of `v` and whether it is exact.
fn isqrt(v: u128) -> (u128, bool) {
    let mut rem = v;
    let mut root = 0u128;
    let mut bit = 1u128 << 126;
    while bit > v {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    (root, rem == 0)
}

/// Square root of a finite non-negative value, rounded to `f` (precision up to 62 bits).
pub(crate) fn sqrt(f: Fmt, a: Unpacked, rc: Round, ftz: bool) -> (u128, u32) {
    if a.sig == 0 {
        return (f.zero(a.sign), 0);
    }
    let (mut s, mut e) = norm_to(a.sig, a.exp, 126);
    if e & 1 != 0 {
        s >>= 1; // top bit 125: no bit lost since norm_to left-shifted a 53-bit value
        e += 1;
    }
    let (root, exact) = isqrt(s);
    round_pack(f, false, e / 2, root, !exact, rc, ftz)
}

/// Convert a NaN of format `from` to format `to`, keeping the top payload bits, quieted.
pub(crate) fn convert_nan(from: Fmt, to: Fmt, bits: u128) -> u128 {
    let sign = bits & from.sign_bit() != 0;
    let payload_from = bits & (from.quiet_bit() << 1).wrapping_sub(1);
    let fb = from.prec() - 1;
    let tb = to.prec() - 1;
    let payload = if tb >= fb {
        payload_from << (tb - fb) as u32
    } else {
        payload_from >> (fb - tb) as u32
    };
    to.quiet(to.inf(sign) | payload)
}

/// Convert an unpacked finite value to a signed integer of `bits` (32 or 64) with `rc` (or
/// truncation). Returns `None` when it does not fit (the caller stores the integer indefinite and
/// raises IE); otherwise the value and whether it was inexact.
pub(crate) fn to_int(a: Unpacked, bits: u32, rc: Round) -> Option<(i64, bool)> {
    if !a.is_finite() {
        return None;
    }
    if a.sig == 0 {
        return Some((0, false));
    }
    // Anything with a leading bit at or above 2^64 cannot fit.
    if a.exp + bit_len(a.sig) > 64 {
        return None;
    }
    let (mag, inexact) = shift_round(a.sig, false, -a.exp, a.sign, rc);
    let limit = 1u128 << (bits - 1);
    let ok = if a.sign { mag <= limit } else { mag < limit };
    if !ok {
        return None;
    }
    let v = if a.sign {
        (mag as i128).wrapping_neg() as i64
    } else {
        mag as i64
    };
    Some((v, inexact))
}

/// Convert a signed integer to format `f`.
pub(crate) fn from_int(f: Fmt, v: i64, rc: Round) -> (u128, u32) {
    let mag = v.unsigned_abs() as u128;
    round_pack(f, v < 0, 0, mag, false, rc, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(x: f64) -> Unpacked {
        unpack(F64, x.to_bits() as u128)
    }
    fn rn(bits: (u128, u32)) -> (f64, u32) {
        (f64::from_bits(bits.0 as u64), bits.1 & !UP)
    }

    #[test]
    fn add_matches_host_rounding_and_flags_inexact() {
        assert_eq!(
            rn(add(F64, d(1.0), d(2.0), Round::Nearest, false)),
            (3.0, 0)
        );
        let (v, fl) = rn(add(F64, d(0.1), d(0.2), Round::Nearest, false));
        assert_eq!(v, 0.1 + 0.2);
        assert_eq!(fl, PE);
    }

    #[test]
    fn subtracting_equal_values_gives_minus_zero_only_rounding_down() {
        assert_eq!(add(F64, d(1.5), d(-1.5), Round::Nearest, false).0, 0);
        assert_eq!(
            add(F64, d(1.5), d(-1.5), Round::Down, false).0,
            (-0.0f64).to_bits() as u128
        );
    }

    #[test]
    fn directed_rounding_moves_one_ulp() {
        let up = rn(div(F64, d(1.0), d(3.0), Round::Up, false)).0;
        let down = rn(div(F64, d(1.0), d(3.0), Round::Down, false)).0;
        assert_eq!(up, f64::from_bits(down.to_bits() + 1));
        assert!(down < 1.0 / 3.0 || up > 1.0 / 3.0);
    }

    #[test]
    fn overflow_rounds_to_max_toward_zero() {
        let (v, fl) = rn(mul(F64, d(f64::MAX), d(2.0), Round::Zero, false));
        assert_eq!(v, f64::MAX);
        assert_eq!(fl, OE | PE);
        assert!(rn(mul(F64, d(f64::MAX), d(2.0), Round::Nearest, false))
            .0
            .is_infinite());
    }

    #[test]
    fn tiny_inexact_product_underflows_and_flushes_with_ftz() {
        let (v, fl) = rn(mul(F64, d(1e-300), d(1e-20), Round::Nearest, false));
        assert_eq!(v, 1e-300 * 1e-20);
        assert_eq!(fl & (UE | PE), UE | PE);
        let (v, fl) = rn(mul(F64, d(1e-300), d(1e-20), Round::Nearest, true));
        assert_eq!(v, 0.0);
        assert_eq!(fl & (UE | PE), UE | PE);
    }

    #[test]
    fn sqrt_is_correctly_rounded() {
        for x in [2.0f64, 3.0, 1e-310, 0.5, 1e300, 12345.678] {
            assert_eq!(
                rn(sqrt(F64, d(x), Round::Nearest, false)).0,
                x.sqrt(),
                "{x}"
            );
        }
        assert_eq!(sqrt(F64, d(4.0), Round::Nearest, false).1, 0);
        assert_eq!(sqrt(F64, d(2.0), Round::Up, false).1, PE | UP);
    }

    #[test]
    fn single_precision_ops_match_host() {
        let s = |x: f32| unpack(F32, x.to_bits() as u128);
        let pairs = [(1.1f32, 3.3f32), (1e30, 1e10), (-7.25, 0.001), (1e-40, 3.0)];
        for (a, b) in pairs {
            assert_eq!(
                add(F32, s(a), s(b), Round::Nearest, false).0,
                (a + b).to_bits() as u128
            );
            assert_eq!(
                mul(F32, s(a), s(b), Round::Nearest, false).0,
                (a * b).to_bits() as u128
            );
            assert_eq!(
                div(F32, s(a), s(b), Round::Nearest, false).0,
                (a / b).to_bits() as u128
            );
        }
    }

    #[test]
    fn to_int_rounds_per_mode_and_rejects_out_of_range() {
        assert_eq!(to_int(d(2.5), 32, Round::Nearest), Some((2, true)));
        assert_eq!(to_int(d(-2.5), 32, Round::Down), Some((-3, true)));
        assert_eq!(to_int(d(2.7), 32, Round::Zero), Some((2, true)));
        assert_eq!(
            to_int(d(-2147483648.0), 32, Round::Zero),
            Some((i32::MIN as i64, false))
        );
        assert_eq!(to_int(d(2147483648.0), 32, Round::Zero), None);
        assert_eq!(to_int(d(9.3e18), 64, Round::Zero), None);
        assert_eq!(to_int(d(f64::NAN), 64, Round::Zero), None);
    }

    #[test]
    fn from_int_rounds_large_values() {
        let (v, fl) = rn(from_int(F64, i64::MAX, Round::Nearest));
        assert_eq!(v, i64::MAX as f64);
        assert_eq!(fl, PE);
        assert_eq!(rn(from_int(F64, -5, Round::Nearest)), (-5.0, 0));
    }

    #[test]
    fn extended_format_round_trips_integers_exactly() {
        let (bits, fl) = from_int(F80, i64::MIN, Round::Nearest);
        assert_eq!(fl, 0);
        let u = unpack(F80, bits);
        assert_eq!(to_int(u, 64, Round::Nearest), Some((i64::MIN, false)));
        assert_eq!(bits >> 64, 0xc03e);
    }

    #[test]
    fn nan_conversion_keeps_payload_top_bits() {
        let snan = 0x7ff4_0000_0000_0001u128;
        assert_eq!(convert_nan(F64, F32, snan), 0x7fe0_0000);
        assert_eq!(convert_nan(F32, F64, 0x7fa0_0000), 0x7ffc_0000_0000_0000);
    }
}
