//! osdeploy's integration tests, in one binary: each module is a suite run against the real
//! `osdeploy` binary and real parts (loop-mounted filesystems, nginx, etcd, FUSE, QEMU), and
//! `support` holds what they share, compiled once. `cargo test -p osdeploy --test integration
//! deltas::` runs one suite; scripts/test.sh runs the slow `vm_boot` suite beside the others.

mod support;

mod boot;
mod bootloader;
mod crash_points;
mod deltas;
mod deploy;
mod durability;
mod fleet;
mod fuse_mount;
mod hostile_clients;
mod hostile_inputs;
mod mirror;
mod power_cuts;
mod real_rootfs;
mod store_cli;
mod transport;
mod transport_faults;
mod vm_boot;
