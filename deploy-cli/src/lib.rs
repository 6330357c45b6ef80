//! `osdeploy` as a library: the parts of the deployment tool that the command-line front end (`src/main.rs`) and the
//! integration tests share.
//!
//! - [`bootloader`]: the bootloader backends (state file, GRUB environment block, systemd-boot entries with boot
//!   counting, U-Boot environment) behind the [`bootloader::Bootloader`] trait.

pub mod bootloader;
