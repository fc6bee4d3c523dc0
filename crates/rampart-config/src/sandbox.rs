//! `-sandbox`: the seccomp sandbox and the process policies it carries.
//!
//! QEMU's option and meaning, with rampart's defaults: the sandbox is on unless `-sandbox off`
//! is given, and every sub-option defaults to its strictest value (`deny`), also when
//! `-sandbox on` is written without them (QEMU defaults all but `obsolete` to `allow`).

/// Whether a class of system calls (or of actions) is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxPermission {
    Allow,
    Deny,
}

impl SandboxPermission {
    pub fn allowed(self) -> bool {
        self == SandboxPermission::Allow
    }
}

/// `elevateprivileges=`: the set*uid/set*gid family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElevatePrivileges {
    /// The set*id calls are allowed.
    Allow,
    /// They are refused.
    Deny,
    /// They are refused and `no_new_privs` is set, so nothing the process executes can gain
    /// privileges (rampart always sets `no_new_privs` with its filters, so this is `Deny`).
    Children,
}

/// The typed `-sandbox` configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Seccomp filters are installed on every thread (`-sandbox on`, the default).
    pub enabled: bool,
    /// `obsolete=`: obsolete system calls (QEMU's list) in the allow-lists.
    pub obsolete: SandboxPermission,
    /// `elevateprivileges=`.
    pub elevate_privileges: ElevatePrivileges,
    /// `spawn=`: creating processes and executing programs (fork, execve). With `deny`, rampart
    /// also refuses up front anything that would start a process (e.g. a tap `script=`, an
    /// `exec:` migration URI), whether or not the filters are on.
    pub spawn: SandboxPermission,
    /// `resourcecontrol=`: CPU affinity and scheduler priority calls.
    pub resource_control: SandboxPermission,
}

impl Default for SandboxConfig {
    /// On, with every sub-option at its strictest.
    fn default() -> Self {
        SandboxConfig {
            enabled: true,
            obsolete: SandboxPermission::Deny,
            elevate_privileges: ElevatePrivileges::Deny,
            spawn: SandboxPermission::Deny,
            resource_control: SandboxPermission::Deny,
        }
    }
}

impl SandboxConfig {
    /// `-sandbox off`: no filters, and (as in QEMU) nothing restricted.
    pub fn off() -> Self {
        SandboxConfig {
            enabled: false,
            obsolete: SandboxPermission::Allow,
            elevate_privileges: ElevatePrivileges::Allow,
            spawn: SandboxPermission::Allow,
            resource_control: SandboxPermission::Allow,
        }
    }

    /// May rampart start another program (a tap script, an `exec:` migration)?
    pub fn spawn_allowed(&self) -> bool {
        self.spawn.allowed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_on_and_strictest() {
        let s = SandboxConfig::default();

        assert!(s.enabled);
        assert_eq!(s.obsolete, SandboxPermission::Deny);
        assert_eq!(s.elevate_privileges, ElevatePrivileges::Deny);
        assert!(!s.spawn_allowed());
        assert_eq!(s.resource_control, SandboxPermission::Deny);
    }

    #[test]
    fn off_restricts_nothing() {
        let s = SandboxConfig::off();

        assert!(!s.enabled);
        assert!(s.spawn_allowed());
    }
}
