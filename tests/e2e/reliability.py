#!/usr/bin/env python3
"""Figures of the reliability campaign (issue #5) and the table in RELIABILITY.md.

Each test that tries something (tokens bent every way, backends killed under load, a burst of
sessions under CAS contention, a flood, Envoy restarts) records what it tried and what it
measured with `record()`: one JSON file per scenario in tests/e2e/reliability-results/
(git-ignored: figures change with every run). The Rust tests in tests/tokens.rs write the same
kind of file (with `unix`, seconds since 1970, instead of `date`). Tests never write the
document: `regenerate()` (run this file: `make soak` and `make fuzz` do at their end, `make
report` on its own) rewrites the table between the markers in RELIABILITY.md: a scenario with a
result file gets the figures of that file; a scenario without one (not run this time) keeps the
row it had.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "e2e" / "reliability-results"
DOC = REPO / "RELIABILITY.md"
BEGIN = "<!-- reliability:start (written by make soak / make report, see tests/e2e/reliability.py) -->"
END = "<!-- reliability:end -->"
HEADER = ("| item | scenario | what was tried | figures | result | run |\n"
          "|---|---|---|---|---|---|")


def run_label() -> str:
    """`make soak` sets TETHER_SOAK=1, `make fuzz` TETHER_FUZZ=1; everything else is `make test`
    (or a single test file)."""
    if os.environ.get("TETHER_FUZZ") == "1":
        return "make fuzz"
    return "make soak" if os.environ.get("TETHER_SOAK") == "1" else "make test"


def soak() -> bool:
    return run_label() == "make soak"


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def record(key: str, *, item: str, tried: str, figures: str, ok: bool,
           seconds: float | None = None, data: dict | None = None) -> Path:
    """Writes tests/e2e/reliability-results/<key>.json. `figures` is the human summary shown in
    the table; `data` any raw numbers worth keeping next to it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = {
        "key": key,
        "item": item,
        "tried": tried,
        "figures": figures,
        "ok": bool(ok),
        "run": run_label(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "seconds": None if seconds is None else round(seconds, 1),
        "data": data or {},
    }
    path = RESULTS / f"{key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _row(entry: dict) -> str:
    took = f", {entry['seconds']} s" if entry.get("seconds") is not None else ""
    date = entry.get("date") or datetime.datetime.fromtimestamp(
        entry.get("unix", 0), datetime.timezone.utc).strftime("%Y-%m-%d")
    result = "pass" if entry.get("ok") else "**FAIL**"
    return (f"| {_cell(entry['item'])} | `{_cell(entry['key'])}` | {_cell(entry['tried'])} | "
            f"{_cell(entry['figures'])} | {result} | {_cell(entry['run'])}, {date}{took} |")


def _existing_rows(text: str) -> dict[str, str]:
    """key -> row line, from the table currently between the markers."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return {}
    rows = {}
    for line in text[start:end].splitlines():
        m = re.match(r"^\|[^|]*\|\s*`([^`]+)`\s*\|", line)
        if m:
            rows[m.group(1)] = line
    return rows


def _sort_key(item_and_key):
    item, key = item_and_key
    nums = re.findall(r"\d+", item)
    return (int(nums[0]) if nums else 99, item, key)


def regenerate(doc: Path = DOC, results: Path = RESULTS) -> bool:
    """Rewrites the table in `doc` from the result files; returns whether it changed."""
    if not doc.exists():
        return False
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        return False
    rows = _existing_rows(text)
    items = {}
    for key, line in rows.items():
        items[key] = line.split("|")[1].strip()
    for path in sorted(results.glob("*.json")) if results.exists() else []:
        try:
            entry = json.loads(path.read_text())
            rows[entry["key"]] = _row(entry)
            items[entry["key"]] = str(entry["item"])
        except (ValueError, KeyError) as exc:
            print(f"reliability: skipping {path}: {exc!r}")
    order = sorted(((items[k], k) for k in rows), key=_sort_key)
    table = "\n".join([HEADER] + [rows[k] for _, k in order])
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END)
    new = text[:start] + "\n" + table + "\n" + text[end:]
    if new != text:
        doc.write_text(new)
        return True
    return False


def record_fuzz(logs: list[Path]) -> None:
    """One row per cargo-fuzz target from its libFuzzer log (fuzz/logs/<target>.log, `make fuzz`)."""
    for log in logs:
        log = Path(log)
        text = log.read_text(errors="replace")
        done = re.findall(r"Done (\d+) runs in (\d+) second", text)
        cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", text)
        crashed = bool(re.search(r"panicked|ERROR: libFuzzer|SUMMARY: \w+Sanitizer|deadly signal", text))
        runs, secs = (int(done[-1][0]), int(done[-1][1])) if done else (0, 0)
        figures = f"{runs} inputs in {secs} s"
        if cov:
            figures += f"; coverage {cov[-1][0]} edges, {cov[-1][1]} features, {cov[-1][2]} inputs"
        kept = REPO / "fuzz" / "corpus" / log.stem
        if kept.is_dir():
            figures += f" ({sum(1 for _ in kept.iterdir())} kept in fuzz/corpus/{log.stem}/ after minimising)"
        figures += "; crashes: " + ("**yes, see fuzz/artifacts/**" if crashed else "0")
        record(f"fuzz-{log.stem}", item="1", ok=bool(done) and not crashed, seconds=secs, figures=figures,
               tried=f"`cargo fuzz run {log.stem}` (libFuzzer, nightly; fuzz/fuzz_targets/{log.stem}.rs)")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["fuzz"]:
        record_fuzz([Path(a) for a in sys.argv[2:]])
    changed = regenerate()
    print(f"{DOC.name}: {'updated' if changed else 'unchanged'}")
