"""`patchstore info`: what a shard folder holds, as a table."""

from __future__ import annotations


def format_info(manifest: dict) -> str:
    """Plain-text table: one line per shard, totals, then the build parameters."""
    rows = [("shard", "patches", "background", "vertebra", "MB")]
    for e in manifest["shards"]:
        rows.append((e["file"], f"{e['patches']:,}", f"{e['counts'][0]:,}", f"{e['counts'][1]:,}",
                     f"{e['bytes'] / 1e6:.1f}"))
    t = manifest["totals"]
    rows.append((f"total ({t['shards']} shards)", f"{t['patches']:,}", f"{t['counts'][0]:,}",
                 f"{t['counts'][1]:,}", f"{sum(e['bytes'] for e in manifest['shards']) / 1e6:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"format {manifest['format_version']}, {manifest['tool_version']}, build key {manifest['build_key']}"
                 + (f", part {manifest['part'][0]}/{manifest['part'][1]}" if "part" in manifest else ""))
    lines.extend(f"  {k:13s} {v}" for k, v in sorted(manifest["build"].items()))
    return "\n".join(lines)
