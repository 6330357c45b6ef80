//! Delta pairing: which old file each new file is diffed against.
//!
//! Of a new tree's contents, most are in the old tree already; of the others, most evolved from
//! an old file at the same path, at the same path with version numbers changed (a kernel's modules
//! under a new release directory), or at least under the same file name. [`pair`] finds that file
//! by these path rules alone, with hash lookups and a binary search by size per new content.

use std::collections::{HashMap, HashSet};

use crate::id::FileId;

/// A regular file of a tree, as pairing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path relative to the tree's root, `/`-separated, without a leading slash.
    pub path: Vec<u8>,
    /// Its content.
    pub file: FileId,
    /// Its size in bytes.
    pub size: u64,
}

/// Which rule paired two files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairRule {
    /// The old file has the same path.
    SamePath,
    /// The paths are equal once version numbers are masked ([`mask_versions`]).
    VersionMasked,
    /// The file names are equal, as they are or once masked, and the sizes within a factor of 2.
    Basename,
}

impl PairRule {
    /// The rule's name in reports (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            PairRule::SamePath => "same-path",
            PairRule::VersionMasked => "version-masked",
            PairRule::Basename => "basename",
        }
    }
}

/// A new content and the old content it is diffed against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pairing {
    /// The old content.
    pub base: FileId,
    /// The new content.
    pub target: FileId,
    /// The rule that paired them.
    pub rule: PairRule,
    /// The new file's path (the smallest, when the new content is at several paths).
    pub path: Vec<u8>,
}

/// Pairs each content of `new` that occurs nowhere in `old` with the old content it most likely
/// evolved from; the result is sorted by target, then base, whatever the order of the input.
///
/// Each new content is paired once, by the smallest of its paths, and the first rule that finds
/// a candidate wins:
/// 1. [`PairRule::SamePath`]: the old file at the same path.
/// 2. [`PairRule::VersionMasked`]: the old file whose path is the same once version numbers are
///    masked ([`mask_versions`]), of the nearest size.
/// 3. [`PairRule::Basename`]: the old file of the same file name (as it is, then once masked) and
///    the nearest size, but only within a factor of 2 of the new size: files that share only a
///    common name, such as two packages' changelogs, are unrelated, and a size far apart says so.
///
/// On equal size distances, the smallest path wins. Empty files are never paired, on either side:
/// there is nothing to gain.
pub fn pair(old: &[TreeFile], new: &[TreeFile]) -> Vec<Pairing> {
    let old_contents: HashSet<FileId> = old.iter().map(|file| file.file).collect();
    let mut targets: HashMap<FileId, &TreeFile> = HashMap::new();
    for file in new.iter().filter(|file| file.size > 0 && !old_contents.contains(&file.file)) {
        let target = targets.entry(file.file).or_insert(file);
        if (&file.path, file.size) < (&target.path, target.size) {
            *target = file;
        }
    }
    let bases = Bases::index(old);
    let mut pairings: Vec<Pairing> = targets
        .into_values()
        .filter_map(|file| {
            let (base, rule) = bases.find(file)?;
            Some(Pairing { base: base.file, target: file.file, rule, path: file.path.clone() })
        })
        .collect();
    pairings.sort_unstable_by_key(|pairing| (pairing.target, pairing.base));
    pairings
}

/// `path` with every maximal run of ASCII digits replaced by one `#`: paths that differ only in
/// version numbers mask alike (`boot/vmlinuz-6.1.0-50-amd64` and `boot/vmlinuz-6.1.0-56-amd64`
/// both give `boot/vmlinuz-#.#.#-#-amd#`).
pub fn mask_versions(path: &[u8]) -> Vec<u8> {
    let mut masked = Vec::with_capacity(path.len());
    let mut previous_is_digit = false;
    for &byte in path {
        let is_digit = byte.is_ascii_digit();
        if !is_digit {
            masked.push(byte);
        } else if !previous_is_digit {
            masked.push(b'#');
        }
        previous_is_digit = is_digit;
    }
    masked
}

/// The last component of a path.
fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|&byte| byte == b'/').next().unwrap_or(path)
}

/// The old files that can be a base (the non-empty ones), indexed by the key of each rule.
struct Bases<'a> {
    by_path: HashMap<&'a [u8], BySize<'a>>,
    by_masked_path: HashMap<Vec<u8>, BySize<'a>>,
    by_basename: HashMap<&'a [u8], BySize<'a>>,
    by_masked_basename: HashMap<Vec<u8>, BySize<'a>>,
}

impl<'a> Bases<'a> {
    fn index(old: &'a [TreeFile]) -> Self {
        let mut bases = Bases {
            by_path: HashMap::new(),
            by_masked_path: HashMap::new(),
            by_basename: HashMap::new(),
            by_masked_basename: HashMap::new(),
        };
        for file in old.iter().filter(|file| file.size > 0) {
            let masked = mask_versions(&file.path);
            // Digit runs do not cross a `/`: the masked path ends with the masked basename.
            bases.by_masked_basename.entry(basename(&masked).to_vec()).or_default().0.push(file);
            bases.by_masked_path.entry(masked).or_default().0.push(file);
            bases.by_path.entry(&file.path).or_default().0.push(file);
            bases.by_basename.entry(basename(&file.path)).or_default().0.push(file);
        }
        for candidates in bases.by_path.values_mut().chain(bases.by_basename.values_mut()) {
            candidates.sort();
        }
        for candidates in bases.by_masked_path.values_mut().chain(bases.by_masked_basename.values_mut()) {
            candidates.sort();
        }
        bases
    }

    /// The base of `file` and the rule that found it, if any rule does.
    fn find(&self, file: &TreeFile) -> Option<(&'a TreeFile, PairRule)> {
        let size = file.size;
        let any_size = |_: &TreeFile| true;
        let similar_size = |base: &TreeFile| base.size.max(size) <= base.size.min(size).saturating_mul(2);
        let masked = mask_versions(&file.path);
        let by_rule = |candidates: Option<&BySize<'a>>, acceptable: &dyn Fn(&TreeFile) -> bool, rule| {
            candidates.and_then(|candidates| candidates.nearest(size, acceptable)).map(|base| (base, rule))
        };
        by_rule(self.by_path.get(file.path.as_slice()), &any_size, PairRule::SamePath)
            .or_else(|| by_rule(self.by_masked_path.get(&masked), &any_size, PairRule::VersionMasked))
            .or_else(|| by_rule(self.by_basename.get(basename(&file.path)), &similar_size, PairRule::Basename))
            .or_else(|| by_rule(self.by_masked_basename.get(basename(&masked)), &similar_size, PairRule::Basename))
    }
}

/// Candidates that share a key, sorted by size, then path, then content.
#[derive(Default)]
struct BySize<'a>(Vec<&'a TreeFile>);

impl<'a> BySize<'a> {
    fn sort(&mut self) {
        self.0.sort_unstable_by(|a, b| (a.size, &a.path, a.file).cmp(&(b.size, &b.path, b.file)));
    }

    /// The candidate nearest in size to `size` among the `acceptable` ones, which must be all
    /// those within some distance of `size` below and above; on equal distances, the smallest
    /// path.
    fn nearest(&self, size: u64, acceptable: &dyn Fn(&TreeFile) -> bool) -> Option<&'a TreeFile> {
        let files = &self.0;
        let first_above = files.partition_point(|file| file.size < size);
        // The first (smallest path) of the nearest size at least `size`, and of the nearest below.
        let above = files.get(first_above).copied();
        let below = first_above.checked_sub(1).and_then(|last_below| {
            let nearest_size = files.get(last_below)?.size;
            files.get(files.partition_point(|file| file.size < nearest_size)).copied()
        });
        // Acceptability narrows with the distance: if the nearest on a side is not, none there is.
        [below, above]
            .into_iter()
            .flatten()
            .filter(|file| acceptable(file))
            .min_by_key(|file| (file.size.abs_diff(size), &file.path, file.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ObjectId;

    fn id(n: u32) -> FileId {
        FileId(ObjectId::of(&n.to_le_bytes()))
    }

    fn file(path: &str, content: u32, size: u64) -> TreeFile {
        TreeFile { path: path.as_bytes().to_vec(), file: id(content), size }
    }

    /// The (path, base, rule) of each pairing, sorted by path for readable assertions.
    fn paired(old: &[TreeFile], new: &[TreeFile]) -> Vec<(String, FileId, PairRule)> {
        let mut paired: Vec<_> =
            pair(old, new).into_iter().map(|p| (String::from_utf8(p.path).unwrap(), p.base, p.rule)).collect();
        paired.sort();
        paired
    }

    #[test]
    fn masks_each_run_of_digits() {
        let mask = |path: &str| String::from_utf8(mask_versions(path.as_bytes())).unwrap();
        assert_eq!(
            mask("usr/lib/modules/6.1.0-50-amd64/kernel/fs/x.ko"),
            "usr/lib/modules/#.#.#-#-amd#/kernel/fs/x.ko"
        );
        assert_eq!(mask("boot/vmlinuz-6.1.0-56-amd64"), "boot/vmlinuz-#.#.#-#-amd#");
        assert_eq!(mask("usr/share/doc/libssl3/changelog.Debian.gz"), "usr/share/doc/libssl#/changelog.Debian.gz");
        assert_eq!(mask("2024/a#1/007"), "#/a##/#");
        assert_eq!(mask(""), "");
    }

    #[test]
    fn same_path_pairs_first() {
        let old = [file("usr/bin/tool", 1, 1000), file("usr/bin/tool2", 2, 1000)];
        let new = [file("usr/bin/tool", 3, 1000)];
        assert_eq!(paired(&old, &new), [("usr/bin/tool".into(), id(1), PairRule::SamePath)]);
    }

    #[test]
    fn version_masked_pairs_kernel_releases() {
        let old = [
            file("usr/lib/modules/6.1.0-50-amd64/kernel/fs/x.ko", 1, 5000),
            file("usr/lib/modules/6.1.0-50-amd64/kernel/fs/y.ko", 2, 5000),
            file("boot/vmlinuz-6.1.0-50-amd64", 3, 8_000_000),
        ];
        let new = [
            file("usr/lib/modules/6.1.0-56-amd64/kernel/fs/x.ko", 11, 5100),
            file("boot/vmlinuz-6.1.0-56-amd64", 13, 8_100_000),
        ];
        assert_eq!(
            paired(&old, &new),
            [
                ("boot/vmlinuz-6.1.0-56-amd64".into(), id(3), PairRule::VersionMasked),
                ("usr/lib/modules/6.1.0-56-amd64/kernel/fs/x.ko".into(), id(1), PairRule::VersionMasked),
            ]
        );
    }

    #[test]
    fn version_masked_prefers_the_nearest_size_then_the_smallest_path() {
        let old =
            [file("lib/libx.so.1.0", 1, 1000), file("lib/libx.so.1.1", 2, 1900), file("lib/libx.so.1.2", 3, 2100)];
        assert_eq!(paired(&old, &[file("lib/libx.so.2.0", 9, 2050)])[0].1, id(3));
        assert_eq!(paired(&old, &[file("lib/libx.so.2.0", 9, 2000)])[0].1, id(2), "tie: smallest path");
        assert_eq!(paired(&old, &[file("lib/libx.so.2.0", 9, 10)])[0].1, id(1));
        assert_eq!(paired(&old, &[file("lib/libx.so.2.0", 9, 1_000_000)])[0].1, id(3), "no size guard");
    }

    #[test]
    fn rules_apply_in_order() {
        let old = [
            file("opt/a/data-1.bin", 1, 100_000),
            file("opt/a/data-2.bin", 2, 5000),
            file("opt/b/data-3.bin", 3, 5000),
            file("opt/c/data-3.bin", 4, 5000),
            file("opt/d/data-1.bin", 5, 100_000),
            file("opt/e/data-9.bin", 6, 9000),
        ];
        let rule_for =
            |path: &str, size| paired(&old, &[file(path, 9, size)]).pop().map(|(_, base, rule)| (base, rule));
        // The same path wins over a version-masked path of nearer size.
        assert_eq!(rule_for("opt/a/data-1.bin", 5000), Some((id(1), PairRule::SamePath)));
        // A version-masked path wins over a file name of nearer size.
        assert_eq!(rule_for("opt/d/data-3.bin", 5000), Some((id(5), PairRule::VersionMasked)));
        // The same file name wins over a masked file name of nearer size; ties go to the smallest path.
        assert_eq!(rule_for("opt/z/data-3.bin", 9000), Some((id(3), PairRule::Basename)));
        // Then the masked file name.
        assert_eq!(rule_for("opt/z/data-7.bin", 90_000), Some((id(1), PairRule::Basename)));
        assert_eq!(rule_for("opt/z/other-7.bin", 90_000), None);
    }

    #[test]
    fn basename_pairs_only_within_a_factor_of_2() {
        let old = [file("usr/share/doc/liba/changelog.gz", 1, 40), file("usr/share/doc/libb/changelog.gz", 2, 190)];
        let new_at = |size| [file("usr/share/doc/libc/changelog.gz", 9, size)];
        // 40 is nearer to 100, but 2.5 times smaller: 190 is the one within a factor of 2.
        assert_eq!(paired(&old, &new_at(100))[0].1, id(2));
        assert_eq!(paired(&old, &new_at(80))[0].1, id(1), "40 is nearer to 80, and half its size");
        assert_eq!(paired(&old, &new_at(380))[0].1, id(2));
        assert_eq!(paired(&old, &new_at(381)), []);
        assert_eq!(paired(&old, &new_at(19)), []);
        assert_eq!(paired(&old, &new_at(20))[0].1, id(1));
    }

    #[test]
    fn each_new_content_is_paired_once_by_its_smallest_path() {
        let old = [file("a/x", 1, 100), file("b/x", 2, 100)];
        let new = [file("b/x", 3, 100), file("a/x", 3, 100)];
        assert_eq!(paired(&old, &new), [("a/x".into(), id(1), PairRule::SamePath)]);
    }

    #[test]
    fn contents_the_old_tree_holds_and_empty_files_are_not_paired() {
        let old = [file("a/moved", 1, 100), file("a/empty", 2, 0), file("a/empty-old", 3, 0)];
        let new = [file("b/moved", 1, 100), file("a/moved", 1, 100), file("a/empty", 4, 0), file("a/empty-old", 5, 10)];
        assert_eq!(paired(&old, &new), []);
    }

    #[test]
    fn deterministic_whatever_the_input_order() {
        let mut old: Vec<TreeFile> = (0..200)
            .map(|n| file(&format!("usr/lib/pkg{}/lib{}.so.{}", n % 7, n % 13, n), n, 1000 + u64::from(n % 17) * 10))
            .collect();
        let mut new: Vec<TreeFile> = (0..200)
            .map(|n| {
                file(
                    &format!("usr/lib/pkg{}/lib{}.so.{}", n % 5, n % 11, n + 3),
                    1000 + n % 150,
                    1000 + u64::from(n % 19) * 10,
                )
            })
            .collect();
        let expected = pair(&old, &new);
        assert!(!expected.is_empty());
        assert!(expected.windows(2).all(|w| (w[0].target, w[0].base) < (w[1].target, w[1].base)));
        for shift in [1, 77, 150] {
            old.reverse();
            old.rotate_left(shift);
            new.rotate_left(shift);
            new.reverse();
            assert_eq!(pair(&old, &new), expected);
        }
    }

    #[test]
    fn large_trees_with_common_names_pair_in_near_linear_time() {
        // 60 000 files a tree, a third of them named `copyright`: a scan of all the candidates
        // of a name for each new file would take 20 000² steps.
        let tree = |generation: u32| -> Vec<TreeFile> {
            (0..60_000u32)
                .map(|n| {
                    let path = match n % 3 {
                        0 => format!("usr/share/doc/pkg{n}/copyright"),
                        1 => format!("usr/lib/modules/6.1.0-{generation}/kernel/m{n}.ko"),
                        _ => format!("usr/bin/tool{n}"),
                    };
                    file(&path, generation * 100_000 + n, 1000 + u64::from(n % 1000))
                })
                .collect()
        };
        let (old, mut new) = (tree(1), tree(2));
        // Moved packages: their copyright is paired by name only.
        for (n, file) in new.iter_mut().enumerate().filter(|(n, _)| n % 300 == 0) {
            file.path = format!("usr/share/doc/moved{n}/copyright").into_bytes();
        }
        let pairings = pair(&old, &new);
        assert_eq!(pairings.len(), 60_000);
        let count = |rule| pairings.iter().filter(|p| p.rule == rule).count();
        assert_eq!(
            (count(PairRule::SamePath), count(PairRule::VersionMasked), count(PairRule::Basename)),
            (39_800, 20_000, 200)
        );
    }
}
