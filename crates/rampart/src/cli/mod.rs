//! QEMU-syntax command line → validated `VmConfig`.
