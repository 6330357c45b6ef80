//! osdeploy's deployment library: what a node does with the trees its repository holds. The command-line front end
//! (`osdeploy`) and, later, the fleet agent call it; it never prints.
//!
//! - [`bootloader`]: the bootloader backends (state file, GRUB environment block, systemd-boot entries with boot
//!   counting, U-Boot environment) behind the [`bootloader::Bootloader`] trait.
//! - [`deploy`]: deployments in a sysroot: A/B slots, switch by reflink checkout, /etc merge, boot-check, health
//!   checks and mark-good, rollback, status.

pub mod bootloader;
pub mod deploy;
