//! Allow-list data → a seccomp-BPF program (seccompiler), with one prefix of our own.
//!
//! The prefix answers `clone3` with `ENOSYS`: its flags sit in a structure in memory, which
//! seccomp cannot inspect, so glibc is made to fall back to `clone`, whose flags the lists
//! can check (threads only, unless `spawn=allow`). In the monitor role it also answers `statx`
//! on a path with `EACCES` (the authz list file is then followed through the descriptor opened
//! at start, as inside a jail); `statx` of an open descriptor goes to the allow-list.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::rules::{Allow, Args};
use super::{Role, SeccompError};

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// The low 32 bits of argument 2 (`statx`'s flags): `args` start at 16, 8 bytes each.
const STATX_FLAGS_OFFSET: u32 = 16 + 2 * 8;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The prefix: `clone3` → `ENOSYS` on x86-64; with `statx_by_path_eacces`, `statx` on a path
/// (no `AT_EMPTY_PATH`) → `EACCES`; everything else falls through to the allow-list.
fn prefix(statx_by_path_eacces: bool) -> Vec<sock_filter> {
    let nr = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    let errno = |e: i32| SECCOMP_RET_ERRNO | u32::try_from(e).unwrap_or(0);
    let mut tail = vec![
        insn(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        insn(BPF_JEQ_K, 0, 1, nr(libc::SYS_clone3)),
        insn(BPF_RET_K, 0, 0, errno(libc::ENOSYS)),
    ];
    if statx_by_path_eacces {
        tail.extend([
            // Not statx: on to the allow-list (past the next 3 instructions).
            insn(BPF_JEQ_K, 0, 3, nr(libc::SYS_statx)),
            insn(BPF_LD_W_ABS, 0, 0, STATX_FLAGS_OFFSET),
            // AT_EMPTY_PATH: a descriptor's own metadata, for the allow-list to judge.
            insn(BPF_JSET_K, 1, 0, libc::AT_EMPTY_PATH as u32),
            insn(BPF_RET_K, 0, 0, errno(libc::EACCES)),
        ]);
    }
    let skip = u8::try_from(tail.len()).unwrap_or(u8::MAX);
    let mut program = vec![
        insn(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another architecture: skip to the allow-list, whose own check rejects it.
        insn(BPF_JEQ_K, 0, skip, AUDIT_ARCH_X86_64),
    ];
    program.extend(tail);
    program
}

fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    // Every narrowed argument here is a 32-bit quantity (ioctl numbers, flags, pids, signals,
    // protections): compare the low 32 bits, as the kernel itself reads them.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// The seccompiler rules (alternatives) that express `args`.
fn rules_for(args: &Args, pid: u32) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let one = |c: SeccompCondition| SeccompRule::new(vec![c]);
    Ok(match args {
        Args::Any => Vec::new(),
        &Args::OneOf(arg, ref values) => values
            .iter()
            .map(|&v| one(condition(arg, SeccompCmpOp::Eq, v)?))
            .collect::<Result<_, _>>()?,
        &Args::Without(arg, mask) => vec![one(condition(arg, SeccompCmpOp::MaskedEq(mask), 0)?)?],
        &Args::With(arg, mask) => vec![one(condition(arg, SeccompCmpOp::MaskedEq(mask), mask)?)?],
        &Args::Null(arg) => vec![one(SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            0,
        )?)?],
        Args::AllEq(pairs) => vec![SeccompRule::new(
            pairs
                .iter()
                .map(|&(arg, v)| condition(arg, SeccompCmpOp::Eq, v))
                .collect::<Result<_, _>>()?,
        )?],
        &Args::OwnProcess(arg) => vec![one(condition(arg, SeccompCmpOp::Eq, u64::from(pid))?)?],
    })
}

/// Compiles one role's list. A system call with several entries is allowed when any of them
/// matches; an entry with [`Args::Any`] allows every use.
pub(crate) fn compile(list: &[Allow], role: Role) -> Result<BpfProgram, SeccompError> {
    compile_with(list, role, SeccompAction::Trap)
}

/// [`compile`] with another answer to calls outside the list (unit tests use `Errno`, so a
/// test thread survives a refused call and can check it).
pub(crate) fn compile_with(
    list: &[Allow],
    role: Role,
    mismatch: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build {
        role: role.name(),
        source,
    };
    // SAFETY: getpid has no arguments and cannot fail.
    let pid = u32::try_from(unsafe { libc::getpid() }).unwrap_or(0);
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for entry in list {
        let rules = rules_for(&entry.args, pid).map_err(err)?;
        let slot = map.entry(entry.nr).or_insert_with(|| Some(Vec::new()));
        match (slot.as_mut(), rules.is_empty()) {
            // Already allowed for every use.
            (None, _) => {}
            (Some(_), true) => *slot = None,
            (Some(existing), false) => existing.extend(rules),
        }
    }
    let rules: BTreeMap<i64, Vec<SeccompRule>> = map
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(err)?;
    let body: BpfProgram = filter.try_into().map_err(err)?;
    // The monitor follows an authz list file through its open descriptor when the path
    // cannot be stat'ed (as inside a jail): a path-based statx is refused, not fatal.
    let mut program = prefix(role == Role::Monitor);
    program.extend(body);
    Ok(program)
}
