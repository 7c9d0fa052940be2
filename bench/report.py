"""Summaries of a run: medians and ratios, the printed tables, the JSON data and the chart."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.workloads import Workload

BASELINE = "fuse-overlayfs"
LIMIT = "plain"
COLORS = {"plain": "tab:gray", "kernel": "tab:blue", "fuse-overlayfs": "tab:green",
          "unionfs-fuse": "tab:purple", "pyunion": "tab:orange"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(workloads: list[Workload], impls: list[str], cells: list[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """One row per (workload, pass): each implementation's median, n, and the two ratios."""
    rows = []
    for wl in workloads:
        for p in wl.passes:
            row: dict[str, Any] = {"workload": wl.name, "pass": p, "impls": {}}
            for impl in impls:
                mine = [c for c in cells if c["workload"] == wl.name and c["impl"] == impl]
                times = [c["passes"][p]["seconds"] for c in mine if c["ok"]]
                errors = [c["error"] for c in mine if not c["ok"]]
                row["impls"][impl] = {
                    "median_s": statistics.median(times) if times else None,
                    "samples_s": times,
                    "failures": len(errors),
                    "error": errors[0] if errors else None,
                }
            base = row["impls"].get(BASELINE, {}).get("median_s")
            limit = row["impls"].get(LIMIT, {}).get("median_s")
            for r in row["impls"].values():
                r["ratio_to_" + BASELINE] = _ratio(r["median_s"], base)
                r["ratio_to_" + LIMIT] = _ratio(r["median_s"], limit)
            rows.append(row)
    return rows


def daemon_summary(workloads: list[Workload], cells: list[dict[str, Any]]
                   ) -> dict[str, dict[str, Any]]:
    """Per FUSE implementation and workload: median peak RSS, and (pyunion) request counts."""
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c["ok"] and c.get("peak_rss_kib") is not None:
            out.setdefault(c["impl"], {}).setdefault(c["workload"], {"rss": [], "req": []})
            entry = out[c["impl"]][c["workload"]]
            entry["rss"].append(c["peak_rss_kib"])
            if c.get("requests"):
                entry["req"].append(c["requests"])
    result: dict[str, dict[str, Any]] = {}
    for impl, per_wl in out.items():
        result[impl] = {}
        for wl in [w.name for w in workloads if w.name in per_wl]:
            e = per_wl[wl]
            reqs = None
            if e["req"]:
                ops = sorted({k for r in e["req"] for k in r})
                reqs = {k: int(statistics.median(r.get(k, 0) for r in e["req"])) for k in ops}
            result[impl][wl] = {"peak_rss_kib_median": int(statistics.median(e["rss"])),
                                "requests_median": reqs}
    return result


def latency_summary(latency: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for impl, res in latency.items():
        s = res["samples"]
        keys = sorted({k for x in s for k in x})
        out[impl] = {"ok": res["ok"], "error": res.get("error"), "n": len(s),
                     **{f"{k}_median_s": statistics.median(x[k] for x in s if k in x)
                        for k in keys}}
    return out


def build(*, started: str, args: dict[str, str], machine: dict[str, Any],
          dataset: dict[str, Any], impls: list[str], unavailable: dict[str, str],
          workloads: list[Workload], checks: dict[str, Any], cells: list[dict[str, Any]],
          latency: dict[str, Any], duration: float) -> dict[str, Any]:
    return {
        "started": started,
        "duration_s": round(duration, 1),
        "args": args,
        "machine": machine,
        "dataset": dataset,
        "implementations": impls,
        "unavailable": unavailable,
        "workloads": [{"name": w.name, "mode": w.mode, "passes": list(w.passes),
                       "about": w.about} for w in workloads],
        "tree_checks": checks,
        "summary": summarize(workloads, impls, cells),
        "daemons": daemon_summary(workloads, cells),
        "latency": latency_summary(latency),
        "cells": cells,
    }


# ---------------------------------------------------------------------------------------------
# text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def _fmt(x: float | None, spec: str) -> str:
    return "FAILED" if x is None else format(x, spec)


def render(data: dict[str, Any]) -> str:
    impls = data["implementations"]
    m, ds = data["machine"], data["dataset"]
    out = [
        f"pyunion benchmark {data['started']} ({data['duration_s']:.0f} s): "
        f"{m['nproc']} CPUs, {m['mem_gib']:.1f} GiB, kernel {m['kernel']}, "
        f"dataset on {m['dataset_fs']['fstype']} ({m['dataset_fs']['source']}), "
        f"load average {' '.join(m['loadavg'])} at start, {' '.join(m['loadavg_end'])} at end",
        f"dataset {ds['scale']['name']}: {ds['counts']['entries']} entries "
        f"({ds['counts']['small_files']} small files, {ds['counts']['dirs']} dirs), "
        f"large file {ds['scale']['large_sizes'][0] >> 20} MiB; "
        f"repetitions {data['args']['reps']} (median shown)",
    ]
    for name, why in data["unavailable"].items():
        out.append(f"{name}: not available ({why})")
    for name, chk in data["tree_checks"].items():
        if not chk.get("ok"):
            out.append(f"WARNING {name}: tree check failed: "
                       + str(chk.get("error") or f"{chk['n_missing']} missing, "
                             f"{chk['n_extra']} extra, e.g. {(chk['missing'] + chk['extra'])[:2]}"))
    rows = data["summary"]
    for title, key, spec in (("median seconds", "median_s", ".3f"),
                             (f"ratio to {BASELINE}", f"ratio_to_{BASELINE}", ".2f"),
                             (f"ratio to {LIMIT}", f"ratio_to_{LIMIT}", ".2f")):
        reference = key.split("_to_")[-1]
        if not rows or key != "median_s" and not any(reference in r["impls"] for r in rows):
            continue
        table = [[f"{r['workload']} ({r['pass']})"] + [_fmt(r["impls"][i][key], spec)
                                                        for i in impls] for r in rows]
        out += ["", title + ":", _table(["workload"] + impls, table)]
    failures = [(r["workload"], i, v["error"]) for r in rows for i, v in r["impls"].items()
                if v["error"]]
    seen = set()
    for wl, impl, err in failures:
        if (wl, impl) not in seen:
            seen.add((wl, impl))
            out.append(f"  failed: {impl} {wl}: {err}")
    out += _render_daemons(data)
    if data["latency"]:
        table = [[impl, _fmt(v.get("mount_median_s"), ".3f"), _fmt(v.get("umount_median_s"),
                  ".3f"), _fmt(v.get("total_median_s"), ".3f"),
                  _fmt(v.get("daemon_exit_after_umount_median_s"), ".3f")
                  if impl != "kernel" else "-",
                  str(v["n"]) + ("" if v["ok"] else f" FAILED: {v['error']}")]
                 for impl, v in data["latency"].items()]
        out += ["", "mount/unmount latency (3-layer stack, background mode, median seconds):",
                _table(["impl", "mount+ready", "umount", "total", "daemon exit", "n"], table)]
    return "\n".join(out)


def _render_daemons(data: dict[str, Any]) -> list[str]:
    daemons = data["daemons"]
    if not daemons:
        return []
    names = list(daemons)
    wls = [w["name"] for w in data["workloads"] if any(w["name"] in daemons[n] for n in names)]
    table = [[wl] + [f"{daemons[n][wl]['peak_rss_kib_median'] / 1024:.0f}"
                     if wl in daemons[n] else "-" for n in names] for wl in wls]
    out = ["", "FUSE daemon peak RSS (VmHWM, MiB, median):", _table(["workload"] + names, table)]
    py = daemons.get("pyunion", {})
    if py:
        if any(v["requests_median"] for v in py.values()):
            rows = []
            for wl, v in py.items():
                reqs = v["requests_median"] or {}
                top = sorted(reqs.items(), key=lambda kv: -kv[1])[:6]
                rows.append([wl, str(sum(reqs.values())),
                             " ".join(f"{k}={n}" for k, n in top)])
            out += ["", "pyunion FUSE requests (whole mount: cold + warm passes, median):",
                    _table(["workload", "total", "most frequent"], rows)]
        else:
            out.append("pyunion FUSE request counts: unavailable (-o stats= not supported)")
    return out


# ---------------------------------------------------------------------------------------------
# chart


def chart(data: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of each implementation's ratio to fuse-overlayfs (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    key = f"ratio_to_{BASELINE}"
    impls = [i for i in data["implementations"] if i != BASELINE]
    rows = data["summary"]
    if BASELINE not in data["implementations"] or not rows or not impls:
        return None
    labels = [f"{r['workload']}\n{r['pass']}" for r in rows]
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(rows)), 5))
    for k, impl in enumerate(impls):
        xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(rows))]
        ys = [r["impls"][impl][key] or 0 for r in rows]
        ax.bar(xs, ys, width, label=impl, color=COLORS.get(impl))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel(f"time relative to {BASELINE} (lower is faster)")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    m = data["machine"]
    ax.set_title(f"pyunion benchmark {data['started']} — {data['dataset']['scale']['name']}, "
                 f"{m['nproc']} CPUs, kernel {m['kernel']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# machine


def _fs_of(path: Path) -> dict[str, str]:
    """The mount holding ``path``: longest mount point that is a prefix of it."""
    target = os.path.realpath(path)
    best: dict[str, str] = {"mountpoint": "", "fstype": "?", "source": "?", "options": ""}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            if (target + "/").startswith(point.rstrip("/") + "/") and \
                    len(point) >= len(best["mountpoint"]):
                sep = fields.index("-")
                best = {"mountpoint": point, "fstype": fields[sep + 1],
                        "source": fields[sep + 2], "options": fields[sep + 3]}
    return best


def _cmd_output(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    r = subprocess.run(cmd, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def machine_info(dataset_root: Path) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    fo = _cmd_output(["fuse-overlayfs", "--version"])
    repo = Path(__file__).resolve().parent.parent
    commit = _cmd_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_output(["git", "-C", str(repo), "status", "--porcelain", "--",
                         "unionfs", "mount_helper"])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_kib / 2**20,
        "kernel": platform.release(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "dataset_fs": _fs_of(dataset_root),
        "fuse_overlayfs": next((ln for ln in fo.splitlines() if "fuse-overlayfs" in ln), fo),
        "unionfs_fuse": _cmd_output(["dpkg-query", "-W", "-f", "${Version}", "unionfs-fuse"]),
        "pyunion_commit": commit + (" + uncommitted changes" if dirty else ""),
    }
