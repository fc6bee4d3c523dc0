//! Host network back ends.

pub mod tap;
