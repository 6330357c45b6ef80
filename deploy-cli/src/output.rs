//! Output: JSON (every `--json` goes through [`print_json`]) and human-readable sizes, modes, dates.

use std::io::Write;

use osdeploy_store::object::{EntryKind, Meta};
use serde::Serialize;

/// Prints `value` as pretty JSON and a newline: the one way every `--json` is printed.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// "1.5 MiB"-style size.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `ls -l`-style type and permission string, e.g. `-rwsr-xr-x`.
pub fn mode_string(kind: &EntryKind, meta: &Meta) -> String {
    let t = match kind {
        EntryKind::File { .. } => '-',
        EntryKind::Dir(_) => 'd',
        EntryKind::Symlink(_) => 'l',
        EntryKind::CharDevice(_) => 'c',
        EntryKind::BlockDevice(_) => 'b',
        EntryKind::Fifo => 'p',
        EntryKind::Socket => 's',
    };
    let m = meta.mode;
    let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (m & x != 0, m & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        t,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// UTC date and time of a unix timestamp, e.g. `2026-11-23 09:32:14 UTC`.
pub fn date(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(1_795_426_334), "2026-11-23 09:32:14 UTC");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        let meta = Meta { mode: 0o4755, ..Default::default() };
        let file = EntryKind::Fifo;
        assert_eq!(mode_string(&file, &meta), "prwsr-xr-x");
        let sticky = Meta { mode: 0o1777, ..Default::default() };
        assert_eq!(mode_string(&file, &sticky), "prwxrwxrwt");
    }
}
