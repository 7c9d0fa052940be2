"""The lazy-pull row (``lazy-run``): a container started before its image has arrived.

The image: the Debian bookworm minbase rootfs with python3 of the page-cache rows
(``pagecache.ensure_python_rootfs``), ``pyunion import``-ed into a source store and pushed with
``push --format estargz`` to a ``docker-registry`` on 127.0.0.1 (``containers.Registry``). Every
client reaches it through the loopback proxy of the tests (``tests/registry/proxy.py``) limited
to 100 Mbit/s (12.5 MB/s) with 20 ms added before each answer.

Per repetition, order rotated, each into an empty store:

- ``lazy``: ``pyunion run --rm --lazy IMAGE python3 -c 'print(1)'`` (TOCs and, while the
  layer directory is made, the files the container opens first: runc's, python3 and its
  libraries; then the rest of what python3 opens, fetched as it is opened);
- ``full``: ``pyunion run --rm IMAGE python3 -c 'print(1)'`` (an ordinary pull, then the run);
- ``podman``: ``podman run --rm --tls-verify=false IMAGE python3 -c 'print(1)'`` (its own
  storage: ``containers.Podman``), skipped with the reason if podman cannot run.

Then, into the same store, more ``run``s of the same command (``second``: the median of
``SECOND_RUNS``): for ``lazy`` what is still missing stays in the registry, so this is what a
second container of a lazily pulled image costs, against the same for a fully pulled one.
Bytes and requests (of the first start) are those the proxy saw (manifest, config, TOCs,
files; the image's compressed size is in the report).

Targets (issue 21): lazy first start <= 20% of full's and of podman's; bytes <= 15% of the
image; lazy second start about full's second start.
``python -m bench.lazy [--quick]`` runs this row alone (as root); --quick: 1 repetition.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import pagecache, standalone
from bench.containers import Failed, Podman, Registry, podman_base
from bench.images import _error, pyunion_cmd, timed
from bench.implementations import REPO, cleanup_cell
from bench.report import _fmt, _table

LAZY = "lazy-run"
NAMES = [LAZY]
TOOLS = ("lazy", "full", "podman")
RATE = 12.5e6  # bytes a second: 100 Mbit/s
DELAY = 0.020
COMMAND = ["python3", "-c", "print(1)"]
REPOSITORY = "bench/python"
SECOND_RUNS = 5  # a second start is a fraction of a second: its median of a few, on a busy host


def _source_image(run_dir: Path, rootfs: Path, registry: Registry, timeout: float,
                  log) -> dict[str, Any]:
    store = run_dir / "lazy-source"
    py = [*pyunion_cmd(), "--root", str(store)]
    wall, _, _ = timed([*py, "import", "-q", str(rootfs), "python:lazy"], timeout, cwd=REPO)
    ref = f"{registry.host}/{REPOSITORY}:estargz"
    push, _, _ = timed([*py, "push", "-q", "--format", "estargz", "--image", "python:lazy",
                        ref], timeout, cwd=REPO)
    manifest, _ = registry.manifest(REPOSITORY, "estargz")
    size = sum(d["size"] for d in manifest["layers"])
    log(f"lazy: python3 image imported in {wall:.1f}s, pushed as eStargz in {push:.1f}s "
        f"({size / 2**20:.1f} MiB compressed)")
    cleanup_cell(store)
    return {"compressed_bytes": size, "layers": len(manifest["layers"])}


def _sample(tool: str, cell: Path, ref: str, proxy, podman: Podman | None,
            timeout: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"tool": tool, "ok": True}
    if tool == "podman":
        assert podman is not None
        cmd = podman.cmd("run", "--rm", "--tls-verify=false", ref, *COMMAND)
        env: dict[str, str] | None = podman.env
    else:
        # the host's network, as podman's here (netns = "host"): root's default bridge would
        # add netavark's setup and change the host's network
        cmd = [*pyunion_cmd(), "--root", str(cell / "store"), "run", "--rm", "-q",
               "--network", "host", *(["--lazy"] if tool == "lazy" else []), ref, *COMMAND]
        env = None
    times = []
    for run in ["first"] + ["second"] * SECOND_RUNS:
        sent, asked = proxy.bytes_sent, len(proxy.requests)
        seconds, _, out = timed(cmd, timeout, env=env, cwd=REPO)
        if out.strip() != b"1":
            raise Failed(f"{tool}: python3 printed {out[-100:]!r}")
        times.append(seconds)
        rec[f"{run}_bytes"] = rec.get(f"{run}_bytes", 0) + proxy.bytes_sent - sent
        rec[f"{run}_requests"] = rec.get(f"{run}_requests", 0) + len(proxy.requests) - asked
    rec["first_s"], rec["second_runs_s"] = times[0], times[1:]
    rec["second_s"] = statistics.median(times[1:])
    return rec


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.registry.proxy import MisbehavingProxy

    rootfs, meta = pagecache.ensure_python_rootfs(args.cache_dir, log)
    if rootfs is None:
        return {LAZY: {"ok": False, "error": meta.get("error", "no python3 rootfs")}}
    registry = Registry(run_dir / "lazy-registry")
    samples: list[dict[str, Any]] = []
    podmans: list[Podman] = []
    try:
        registry.start()
        image = _source_image(run_dir, rootfs, registry, args.timeout, log)
        skip = {"podman": why} if (why := Podman.missing()) else {}
        with MisbehavingProxy(registry.port) as proxy:
            proxy.rate, proxy.delay = RATE, DELAY
            ref = proxy.ref(f"{REPOSITORY}:estargz")
            for rep in range(args.reps):
                order = TOOLS[rep % 3:] + TOOLS[:rep % 3]
                for tool in order:
                    if tool in skip:
                        samples.append({"tool": tool, "rep": rep, "ok": False,
                                        "error": skip[tool]})
                        continue
                    cell = run_dir / f"lazy-r{rep}-{tool}"
                    cell.mkdir()
                    podman = Podman(podman_base(args.cache_dir)) if tool == "podman" else None
                    if podman is not None:
                        podmans.append(podman)
                    try:
                        rec = _sample(tool, cell, ref, proxy, podman, args.timeout)
                    except (OSError, subprocess.SubprocessError, Failed) as e:
                        rec = {"tool": tool, "ok": False, "error": _error(e)}
                        skip[tool] = f"failed in an earlier repetition: {_error(e)}"
                    finally:
                        if podman is not None:
                            podman.close()
                        cleanup_cell(cell)
                    rec["rep"] = rep
                    samples.append(rec)
                    log(f"lazy rep {rep + 1}/{args.reps} {tool:6s} " + (
                        f"first {rec['first_s']:.2f}s ({rec['first_bytes'] / 2**20:.1f} MiB, "
                        f"{rec['first_requests']} requests), "
                        f"second {rec['second_s']:.2f}s" if rec["ok"]
                        else f"FAILED: {rec['error']}"))
    except (OSError, subprocess.SubprocessError, Failed) as e:
        return {LAZY: {"ok": False, "error": _error(e), "samples": samples}}
    finally:
        registry.stop()
    return {LAZY: {"ok": True, "image": {**image, "python3": meta.get("python3")},
                   "rate_bytes_s": RATE, "delay_s": DELAY, "samples": samples,
                   "summary": summarize(samples, image["compressed_bytes"])}}


def summarize(samples: list[dict[str, Any]], image_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in TOOLS:
        ok = [s for s in samples if s["tool"] == tool and s["ok"]]
        out[tool] = {key: statistics.median(s[key] for s in ok) if ok else None
                     for key in ("first_s", "second_s", "first_bytes", "first_requests")}
        out[tool]["errors"] = [s["error"] for s in samples if s["tool"] == tool and not s["ok"]]
    lazy, full, podman = out["lazy"], out["full"], out["podman"]
    out["ratios"] = {
        "lazy/full first": _ratio(lazy["first_s"], full["first_s"]),
        "lazy/podman first": _ratio(lazy["first_s"], podman["first_s"]),
        "lazy bytes/image": _ratio(lazy["first_bytes"], image_bytes),
        "lazy/full second": _ratio(lazy["second_s"], full["second_s"]),
    }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def render(res: dict[str, Any]) -> list[str]:
    row = res.get(LAZY)
    if not row:
        return []
    lines = ["", "lazy pull (run python3 -c 'print(1)' through a 100 Mbit/s, 20 ms proxy)"]
    if not row["ok"]:
        return [*lines, f"  FAILED: {row['error']}"]
    s = row["summary"]
    rows = []
    for tool in TOOLS:
        v = s[tool]
        mib = v["first_bytes"] / 2**20 if v["first_bytes"] is not None else None
        rows.append([tool, _fmt(v["first_s"], ".2f"), _fmt(mib, ".1f"),
                     _fmt(v["first_requests"], ".0f"), _fmt(v["second_s"], ".2f"),
                     "; ".join(v["errors"])[:60]])
    lines.append(_table(["", "first start s", "MiB fetched", "requests", "second start s",
                         "errors"], rows))
    r = s["ratios"]
    lines.append(f"  image {row['image']['compressed_bytes'] / 2**20:.1f} MiB compressed; "
                 + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in r.items())
                 + " (targets: first <= 0.2, bytes <= 0.15, second ~1)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args("lazy", __doc__, NAMES, argv, quick_help="1 repetition",
                                 reps_help="repetitions (default 3; --quick: 1)",
                                 root_because="containers, mounts")
    res = standalone.run_in_fresh_dir(args, run)
    return standalone.report(args, "lazy-pull benchmark", "lazy", res, render)


if __name__ == "__main__":
    sys.exit(main())
