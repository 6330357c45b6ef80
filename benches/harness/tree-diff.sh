#!/usr/bin/env bash
# What changed between two trees, file by file: sizes, entry counts, and the regular files whose
# content differs (same path, other content), that are new, or that are gone — and how much of
# NEW's content is not anywhere in OLD (by sha256). Used for the pairs of make-os-pair.sh.
# Usage: benches/harness/tree-diff.sh OLD NEW [WORK]
#   WORK (default: a temporary directory, removed) keeps {old,new}.sha256 and the lists
#   changed.txt, added.txt, removed.txt.
# Prints "key<TAB>value" lines.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD NEW [WORK]" >&2; exit 2; }
old=$(realpath "$1"); new=$(realpath "$2")
if [ $# -ge 3 ]; then mkdir -p "$3"; w=$(realpath "$3"); else w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; fi
for x in old new; do
  t=$old; [ $x = new ] && t=$new
  # path<TAB>sha256<TAB>size for every regular file, sorted by path
  (cd "$t" && find . -xdev -type f -printf '%P\0' | sort -z | xargs -0r sha256sum -z --) |
    tr '\0' '\n' | sed 's/^\([0-9a-f]\{64\}\)  \(.*\)$/\2\t\1/' > "$w/$x.sha256.tmp"
  (cd "$t" && find . -xdev -type f -printf '%P\t%s\n' | sort) > "$w/$x.sizes"
  join -t $'\t' "$w/$x.sha256.tmp" "$w/$x.sizes" > "$w/$x.sha256"; rm -f "$w/$x.sha256.tmp"
  echo -e "${x}_bytes_apparent\t$(du -sb --apparent-size "$t" | cut -f1)"
  echo -e "${x}_regular_files\t$(wc -l < "$w/$x.sha256")"
  echo -e "${x}_dirs\t$(find "$t" -xdev -type d | wc -l)"
  echo -e "${x}_symlinks\t$(find "$t" -xdev -type l | wc -l)"
done
join -t $'\t' "$w/old.sha256" "$w/new.sha256" | awk -F'\t' '$2 != $4 {print $1 "\t" $5}' > "$w/changed.txt"
join -t $'\t' -v2 "$w/old.sha256" "$w/new.sha256" | cut -f1,3 > "$w/added.txt"
join -t $'\t' -v1 "$w/old.sha256" "$w/new.sha256" | cut -f1,3 > "$w/removed.txt"
sum() { awk -F'\t' '{s+=$2} END {print s+0}' "$1"; }
echo -e "files_changed_same_path\t$(wc -l < "$w/changed.txt")\nbytes_changed_same_path\t$(sum "$w/changed.txt")"
echo -e "files_added\t$(wc -l < "$w/added.txt")\nbytes_added\t$(sum "$w/added.txt")"
echo -e "files_removed\t$(wc -l < "$w/removed.txt")\nbytes_removed\t$(sum "$w/removed.txt")"
# content of NEW that OLD has nowhere (renamed or moved files with equal content do not count)
awk -F'\t' 'NR==FNR {h[$2]=1; next} !($2 in h) {n++; s+=$3} END {print "files_new_content\t" n+0 "\nbytes_new_content\t" s+0}' \
  "$w/old.sha256" "$w/new.sha256"
