"""The bookkeeping of `.ci/gpu check` (python3 stdlib only, so the dry run needs no torch):

    python3 .ci/gpu_step.py record JSONL NAME --timeout T [--rc RC --started EPOCH --log LOG --parse KIND]
                                             [--skipped REASON | --dry-run] [--command CMD] [--elapsed E]
    python3 .ci/gpu_step.py table JSONL

`record` appends one JSON line for a step (name, status, seconds, rc, timed_out, its key numbers read from its
output by KIND) as soon as the step ends, so a window cut short still returns what it measured; it exits 1 when
the step failed: a non-zero exit, or output that contradicts a pass (no test ran, no CUDA kernels built).
`table` prints every recorded step and exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

NUMBER = re.compile(r"^-?[\d.,]+(x|%)?$")


def parse_env(text: str) -> tuple[dict, bool]:
    """`name: value` lines (the `env` subcommand of .ci/gpu prints one per tool)."""
    keys = dict(m.groups() for m in re.finditer(r"^([\w+.-]+): (.*)$", text, re.M))
    return keys, "FAILED" not in text


def parse_info(text: str) -> tuple[dict, bool]:
    """golf.info: how many ops have a CUDA kernel; a pass needs golf._C built with its CUDA kernels."""
    ops = [line for line in text.splitlines() if re.match(r"^\s+golf::\S+\s", line)]
    cuda = [line for line in ops if re.search(r"\bcuda\b", line)]
    ok = "CUDA kernels: built" in text and "NOT BUILT" not in text
    return {"ops": len(ops), "cuda_ops": len(cuda)}, ok


def parse_pytest(text: str) -> tuple[dict, bool]:
    """pytest's last summary line (`18 passed, 1 skipped in 9.61s`); a pass needs a test that passed."""
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|error|skipped).* in [\d.]+s", line)]
    if not lines:
        return {}, False
    keys = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for count, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", lines[-1]):
        keys["errors" if word.startswith("error") else word] = int(count)
    keys["seconds"] = float(re.search(r" in ([\d.]+)s", lines[-1]).group(1))
    return keys, keys["passed"] > 0 and keys["failed"] == keys["errors"] == 0


def parse_sanitizer(text: str) -> tuple[dict, bool]:
    """compute-sanitizer's `ERROR SUMMARY: N errors` (memcheck) or `RACECHECK SUMMARY: N hazards displayed
    (E errors, W warnings)` (racecheck)."""
    keys = {}
    if m := re.findall(r"ERROR SUMMARY: (\d+) errors?", text):
        keys["errors"] = int(m[-1])
    if m := re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text):
        keys["hazards"], errors, keys["warnings"] = map(int, m[-1])
        keys.setdefault("errors", errors)
    return keys, keys.get("errors", 0) == 0


def parse_bench(text: str) -> tuple[dict, bool]:
    """The golf rows of every CUDA table (`name  numbers...`, under a `[... cuda ...]` header, after its `impl`
    header row), and bench.eval's scored targets per second of the h100x8 model."""
    keys, section = {}, ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line[1:line.find("]")]
        words = line.split()
        if "cuda" not in section or not words:
            continue
        if words[0] == "impl":
            keys[f"{section}: columns"] = " ".join(words[1:])
        elif words[0].startswith("golf"):
            split = next((i for i, w in enumerate(words) if NUMBER.match(w)), len(words))
            keys[f"{section}: {' '.join(words[:split])}"] = " ".join(words[split:])
    if m := re.findall(r"([\d,]+) scored targets/s per GPU", text):
        keys["scored_targets_per_s"] = int(m[-1].replace(",", ""))
    return keys, True


def parse_step(text: str) -> tuple[dict, bool]:
    """bench.step: each path's tokens/s and its pace against the records', and the step row's times."""
    keys = {}
    for arm, tps, pace in re.findall(r"^(\w+): ([\d,]+) tokens/s(?:, ([\d.]+)x the records')?", text, re.M):
        keys[f"{arm}_tokens_per_s"] = int(tps.replace(",", ""))
        if pace:
            keys[f"{arm}_vs_records"] = float(pace)
    if m := re.findall(r"^\| step \| (.*) \|$", text, re.M):
        keys["step_row"] = m[-1]
    return keys, bool(keys)


def parse_eval(text: str) -> tuple[dict, bool]:
    """golf.eval --json: the last JSON line's scores, time and derived 8-GPU time."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            out = json.loads(line)
            keys = {k: out.get(k) for k in ("method", "val_bpb", "targets", "seconds", "tokens_per_s",
                                            "projected_seconds", "derived_8x_seconds", "derived_8x_fits")}
            return keys, out.get("val_bpb") is not None
    return {}, False


def parse_summary(path: str) -> tuple[dict, bool]:
    """A golf.train run's summary.json: the numbers the check is for."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return {"summary": f"unreadable: {e}"}, False
    keys = {k: summary.get(k) for k in ("val_bpb", "steps", "ms_per_step", "tokens_per_s", "total_bytes")}
    keys["stage_seconds"] = {k: round(v, 1) for k, v in (summary.get("stage_seconds") or {}).items()}
    if "error" in summary:
        keys["error"] = summary["error"]
    return keys, "error" not in summary


def parse(kind: str, text: str) -> tuple[dict, bool]:
    if kind == "none":
        return {}, True
    if kind.startswith("summary:"):
        return parse_summary(kind.split(":", 1)[1])
    return {"env": parse_env, "info": parse_info, "pytest": parse_pytest, "sanitizer": parse_sanitizer,
            "bench": parse_bench, "step": parse_step, "eval": parse_eval}[kind](text)


def record(a) -> int:
    row = {"name": a.name, "timeout": a.timeout}
    if a.dry_run:
        row.update(status="dry_run", dry_run=True)
    elif a.skipped:
        row.update(status="skipped", reason=a.skipped)
    else:
        text = Path(a.log).read_text(errors="replace") if a.log else ""
        keys, ok = parse(a.parse, text)
        row.update(status="passed" if a.rc == 0 and ok else "failed", seconds=round(time.time() - a.started, 1),
                   rc=a.rc, timed_out=a.rc in (124, 137), keys=keys)
    row.update(elapsed=round(a.elapsed, 1), command=a.command)
    with open(a.jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")
    if row["status"] in ("passed", "failed"):
        print(f"== {a.name}: {row['status']} in {row['seconds']} s (exit {a.rc}"
              f"{', timed out' if row['timed_out'] else ''}) {json.dumps(row['keys'])}")
    return 1 if row["status"] == "failed" else 0


def table(a) -> int:
    rows = [json.loads(line) for line in Path(a.jsonl).read_text().splitlines() if line.strip()]
    print(f"{'step':<20}{'status':<9}{'seconds':>8}{'timeout':>8}{'exit':>6}  key numbers")
    for r in rows:
        detail = json.dumps(r["keys"]) if "keys" in r else r.get("reason", "")
        seconds = r.get("seconds", "-")
        print(f"{r['name']:<20}{r['status']:<9}{seconds:>8}{r['timeout']:>8}{r.get('rc', '-'):>6}  "
              f"{detail[:160] + ('...' if len(detail) > 160 else '')}")
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    print(f"{len(rows)} steps, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("record")
    r.add_argument("jsonl")
    r.add_argument("name")
    r.add_argument("--timeout", type=int, required=True)
    r.add_argument("--rc", type=int, default=0)
    r.add_argument("--started", type=float, default=0.0, help="the step's start (seconds since the epoch)")
    r.add_argument("--elapsed", type=float, default=0.0, help="seconds since the check began, at the step's end")
    r.add_argument("--log")
    r.add_argument("--parse", default="none", help="env, info, pytest, sanitizer, bench, summary:PATH or none")
    r.add_argument("--skipped", metavar="REASON")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--command", default="")
    t = sub.add_parser("table")
    t.add_argument("jsonl")
    a = p.parse_args()
    return record(a) if a.verb == "record" else table(a)


if __name__ == "__main__":
    sys.exit(main())
