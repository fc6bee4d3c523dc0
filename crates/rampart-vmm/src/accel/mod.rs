//! The accelerator boundary: a vCPU backend runs guest code until an exit and exposes its
//! register state. `kvm` implements it over kvm-ioctls; `tcg` is rampart's software CPU.
