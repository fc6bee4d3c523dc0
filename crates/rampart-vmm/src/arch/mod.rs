//! Architecture-specific machine set-up. Only x86-64 for now.

pub mod x86_64;
