#!/usr/bin/env python3
"""Markdown tables of one benches/harness/compare.sh run: osdeploy and its peers side by side.

Usage: benches/harness/table.py WORK > WORK/table.md

Reads what the harness scripts wrote under WORK (each part is optional, a missing one is said so):
  WORK/pull/results.tsv    benches/harness/pull-vs-peers.sh (osdeploy pull, mirror, reference)
  WORK/peers/peers.tsv     benches/harness/peers.sh (OSTree, casync, xdelta3, zstd, rsync, full)
  WORK/store/results.tsv   benches/harness/store-vs-peers.sh (commit, checkout, switch)
  WORK/run.txt             what compare.sh recorded about the run (date, commit, machine)
If a peers.tsv tool appears twice (a step was rerun), its last row wins.
"""
import csv
import os
import statistics
import sys


def read(path):
    if not os.path.exists(path):
        return None
    with open(path, newline='') as f:
        return list(csv.DictReader(f, delimiter='\t'))


def num(s):
    return f'{int(s):,}' if s and s.isdigit() else (s or '–')


def mib(kib):
    return f'{int(kib) / 1024:.0f} MiB' if kib and kib.isdigit() else '–'


def dash(s):
    return s if s and s != '-' else '–'


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    pull = read(f'{work}/pull/results.tsv')
    peers = read(f'{work}/peers/peers.tsv')
    store = read(f'{work}/store/results.tsv')
    out = []
    if os.path.exists(f'{work}/run.txt'):
        out += ['```', open(f'{work}/run.txt').read().rstrip(), '```', '']

    last = {}
    for r in peers or []:
        last[r['tool']] = r
    p = last.get

    out += ['### Update OLD → NEW', '',
            '| tool | bytes on the wire | requests | generate s | apply s | peak RSS (apply) | note |',
            '|---|---:|---:|---:|---:|---:|---|']
    if pull is None:
        out.append('| osdeploy | (no WORK/pull/results.tsv) | | | | | |')
    generated = {r['level']: r for r in pull or [] if r['tool'] == 'generate'}
    for r in pull or []:
        if r['tool'] == 'osdeploy' and r['case'] in ('update', 'update --no-deltas'):
            exact = 'plan exact' if (r['bytes'], r['requests']) == (r['predicted_bytes'], r['predicted_requests']) \
                else f"plan said {num(r['predicted_bytes'])} B / {r['predicted_requests']} requests"
            gen = generated.get(r['level'])
            if r['case'] == 'update':
                name = f"**osdeploy pull, per-file deltas**, origin at zstd {r['level']}"
                gen_s = gen['wall_s'] if gen else '–'
                note = f"generation peak RSS {mib(gen['max_rss_kib'])}; " if gen else ''
            else:
                name, gen_s, note = f"osdeploy pull --no-deltas (chunks), origin at zstd {r['level']}", '–', ''
            out.append(f"| {name} | **{num(r['bytes'])}** | **{r['requests']}** "
                       f"| {gen_s} | {r['wall_s']} | {mib(r['max_rss_kib'])} | {note}HTTP Range, bare repo on xfs; {exact} |")
    update_peers = [
        ('ostree-pull-objects', 'OSTree object pull (archive, zlib)'),
        ('ostree-pull-static-delta', 'OSTree static delta pull'),
        ('casync-http-extract', 'casync extract over HTTP, --seed=OLD'),
        ('casync-needed-chunks+index', 'casync: needed chunks + index (computed)'),
        ('xdelta3-9-tar', 'xdelta3 -9 of whole tars'),
        ('zstd-19-patch-from-tar', 'zstd -19 --long --patch-from of whole tars'),
        ('rsync-batch', 'rsync batch file'),
        ('rsync-daemon', 'rsync daemon protocol'),
        ('rsync-daemon-z', 'rsync daemon protocol, -z'),
        ('full-tar.zst-19', 'full image: tar.zst -19 of NEW'),
    ]
    if peers is None:
        out.append('| peers | (no WORK/peers/peers.tsv) | | | | | |')
    for tool, label in update_peers:
        r = p(tool)
        if r is None:
            if peers is not None:
                out.append(f'| {label} | (not measured) | | | | | |')
            continue
        note = r['note']
        if tool == 'ostree-pull-static-delta' and p('ostree-static-delta-file'):
            note = f"delta file {num(p('ostree-static-delta-file')['bytes'])} B; " + note
        out.append(f"| {label} | {num(r['bytes'])} | {dash(r['requests'])} | {dash(r['gen_s'])} | {dash(r['apply_s'])} "
                   f"| {mib(r['apply_rss_kib'])} | {note} |")

    out += ['', '### Full pull of NEW into an empty node', '',
            '| tool | bytes | requests | wall s | peak RSS |', '|---|---:|---:|---:|---:|']
    for r in pull or []:
        if r['tool'] in ('osdeploy', 'reference') and not r['case'].startswith('update'):
            name = 'osdeploy pull' if r['tool'] == 'osdeploy' else 'reference: osdeploy checkout from the archive repo'
            out.append(f"| {name}, zstd {r['level']}, {r['case']} | {num(r['bytes'])} | {dash(r['requests'])} "
                       f"| {r['wall_s']} | {mib(r['max_rss_kib'])} |")
    for tool, label in [('ostree-objects-full-NEW', 'OSTree: every object of NEW'),
                        ('casync-full-NEW', 'casync: every chunk of NEW + index'),
                        ('full-tar.zst-19', 'tar.zst -19 of NEW')]:
        r = p(tool)
        if r:
            out.append(f"| {label} | {num(r['bytes'])} | {dash(r['requests'])} | – | – |")

    mirror = [r for r in pull or [] if r['tool'] == 'mirror']
    if mirror:
        out += ['', '### Mirror', '', '| run | zstd | bytes | requests | wall s | peak RSS |', '|---|---:|---:|---:|---:|---:|']
        for r in mirror:
            out.append(f"| {r['case']} | {r['level']} | {num(r['bytes'])} | {r['requests']} | {r['wall_s']} "
                       f"| {mib(r['max_rss_kib'])} |")

    if store:
        out += ['', '### Commit, checkout, switch (mean of runs, min–max)', '',
                '| operation | fs | tool | wall s | peak RSS | extra space | note |', '|---|---|---|---:|---:|---:|---|']
        groups = {}
        for r in store:
            groups.setdefault((r['op'], r['fs'], r['tool']), []).append(r)
        for (op, fs, tool), rs in groups.items():
            walls = [float(r['wall_s']) for r in rs]
            rss = statistics.mean(int(r['max_rss_kib']) for r in rs)
            extra = statistics.mean(int(r['extra_used_kib']) for r in rs)
            span = f' ({min(walls):.2f}–{max(walls):.2f})' if len(walls) > 1 else ''
            out.append(f"| {op} | {fs} | {tool} | {statistics.mean(walls):.2f}{span} | {rss / 1024:.0f} MiB "
                       f"| {extra / 1024:.1f} MiB | {rs[0]['note']} |")
    print('\n'.join(out))


main()
