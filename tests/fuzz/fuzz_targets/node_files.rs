//! The files a node reads at every command and boot: its deployment state, its configuration, and
//! the bootloader environments (GRUB's env block, U-Boot's environment image).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use osdeploy_deploy::bootloader::{grub, uboot};
use osdeploy_deploy::deploy::config::Config;
use osdeploy_deploy::deploy::state::State;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let path = Path::new("fuzz");
    match which % 4 {
        0 => drop(State::parse(bytes, path)),
        1 => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                drop(Config::parse(text, path));
            }
        }
        2 => drop(grub::parse_env_block(bytes, path)),
        _ => drop(uboot::parse_env(bytes, bytes.len(), path)),
    }
});
