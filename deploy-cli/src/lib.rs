//! `osdeploy` as a library: the parts of the deployment tool that the command-line front end (`src/main.rs`) and the
//! integration tests share.
//!
//! - [`bootloader`]: the bootloader backends (state file, GRUB environment block, systemd-boot entries with boot
//!   counting, U-Boot environment) behind the [`bootloader::Bootloader`] trait.
//! - [`deploy`]: deployments in a sysroot: A/B slots, switch by reflink checkout, /etc merge, boot-check, health
//!   checks and mark-good, rollback, status.

pub mod bootloader;
pub mod deploy;
