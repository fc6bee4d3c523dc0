//! After `drop_to`, a process cannot open a root-only file: the same `open(2)` a monitor
//! command that names a host path would make. A child of the test drops its privileges between
//! fork and exec, then runs `cat` on the file. Needs root (to create the file and to switch).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rampart_config::RunAsUser;
use rampart_sandbox::privilege::{drop_to, Credentials};

fn root_only_file() -> std::path::PathBuf {
    // SAFETY: geteuid only reads the caller's credentials.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let dir = std::env::temp_dir().join(format!("rampart-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, "root only\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

fn cat(file: &std::path::Path, creds: Option<Credentials>) -> std::process::Output {
    let mut cmd = Command::new("cat");
    cmd.arg(file);
    if let Some(c) = creds {
        // SAFETY: between fork and exec the child only makes the syscalls of `drop_to`
        // (no allocation: no chroot path, and errors are only formatted on failure).
        unsafe {
            cmd.pre_exec(move || drop_to(Some(&c), None).map_err(std::io::Error::other));
        }
    }
    cmd.output().unwrap()
}

#[test]
fn a_dropped_process_cannot_open_a_root_only_file() {
    let file = root_only_file();
    let nobody = Credentials::resolve(&RunAsUser::Name("nobody".into())).unwrap();

    let as_root = cat(&file, None);
    let dropped = cat(&file, Some(nobody));

    assert!(as_root.status.success(), "{as_root:?}");
    assert_eq!(as_root.stdout, b"root only\n");
    assert!(!dropped.status.success(), "{dropped:?}");
    assert!(
        String::from_utf8_lossy(&dropped.stderr).contains("Permission denied"),
        "{dropped:?}"
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}
