#!/usr/bin/env python3
"""An SVG bar chart of an update's bytes on the wire, osdeploy and its peers, from one
benches/harness/compare.sh run (or its parts: WORK/pull/results.tsv and WORK/peers/peers.tsv).

Usage: benches/harness/chart.py WORK TITLE > chart.svg
Plain SVG, no plotting library: the harness needs nothing beyond python3.
"""
import csv
import html
import os
import sys

ROWS = [  # (source, key, label)
    ('pull', ('osdeploy', '3', 'update'), 'osdeploy pull, per-file deltas'),
    ('pull', ('osdeploy', '3', 'update --no-deltas'), 'osdeploy pull, chunks only'),
    ('peers', 'ostree-pull-objects', 'OSTree object pull'),
    ('peers', 'ostree-pull-static-delta', 'OSTree static delta pull'),
    ('peers', 'ostree-static-delta-file', 'OSTree static delta file (not a pull)'),
    ('peers', 'casync-http-extract', 'casync extract, --seed=OLD'),
    ('peers', 'rsync-daemon-z', 'rsync -z'),
    ('peers', 'xdelta3-9-tar', 'xdelta3 -9 of whole tars'),
    ('peers', 'zstd-19-patch-from-tar', 'zstd --patch-from of whole tars'),
]


def read(path):
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f, delimiter='\t'))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    work, title = sys.argv[1], sys.argv[2]
    pull = {(r['tool'], r['level'], r['case']): r for r in read(f'{work}/pull/results.tsv')}
    peers = {r['tool']: r for r in read(f'{work}/peers/peers.tsv')}
    bars = []
    for source, key, label in ROWS:
        row = (pull if source == 'pull' else peers).get(key)
        if row and row['bytes'].isdigit():
            bars.append((label, int(row['bytes']), row.get('requests', '')))
    if not bars:
        sys.exit(f'chart: no rows under {work}')
    top = max(b for _, b, _ in bars)
    left, width, height, bar = 300, 460, 30, 20
    svg_height = 60 + height * len(bars)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 160}" height="{svg_height}" '
           f'font-family="sans-serif" font-size="13">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="24" font-size="16">{html.escape(title)}</text>']
    for i, (label, value, requests) in enumerate(bars):
        y = 44 + i * height
        w = max(1, round(width * value / top))
        color = '#1f77b4' if label.startswith('osdeploy pull, per-file') else '#a0a0a0'
        req = f', {requests} req' if requests and requests not in ('-', '1') else ''
        out += [f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>',
                f'<rect x="{left}" y="{y}" width="{w}" height="{bar}" fill="{color}"/>',
                f'<text x="{left + w + 6}" y="{y + 15}">{value / 1e6:.2f} MB{req}</text>']
    out.append('</svg>')
    print('\n'.join(out))


main()
