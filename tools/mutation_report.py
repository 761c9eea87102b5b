"""Write the mutation-testing report of ``nox -s mutation`` from mutmut's results in ./mutants/.

Runs in the session's venv (it imports mutmut 3.8). Writes ``summary.json`` (counts, score, every mutant
that was not killed, with its diff) and ``summary.md`` (the same for people) into ``--out``.

The score is mutmut's: (killed + timeout) / (all mutants - skipped). A mutant that survives but cannot
change anything observable is listed with its reason from ``notes.json`` beside the report
(``{"mutant name": {"diff": "<one-line diff>", "reason": "..."}}``); a note whose diff no longer matches
its mutant (the source moved) is reported as stale instead of being applied.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_line_diff(diff: str) -> str:
    """``old -> new`` from a unified diff of one function: the removed and the added lines, stripped."""
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return f"{' / '.join(removed) or '(nothing)'} -> {' / '.join(added) or '(removed)'}"


def function_of(mutant: str) -> str:
    """``pdmp.compare.Study.plot`` from mutmut's ``pdmp.compare.xǁStudyǁplot__mutmut_12``."""
    module, _, name = mutant.rsplit("__mutmut_", 1)[0].rpartition(".")
    return f"{module}.{name.removeprefix('x_').removeprefix('x').replace('ǁ', '.').strip('.')}"


def source_line(path: Path, removed: str) -> int | None:
    """The first line number of ``path`` whose stripped text is ``removed`` (the mutated line), if unique enough."""
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.strip() == removed:
            return number
    return None


def collect() -> dict:
    # mutmut reads [tool.mutmut] from the working directory's pyproject.toml at import.
    from mutmut.configuration import config
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    files = {}
    others = []
    for path in sorted(str(p) for p in config().source_paths for p in Path(p).rglob("*.py")):
        if not config().should_mutate(path):
            continue
        data = SourceFileMutationData(path=path)
        data.load()
        counts: Counter[str] = Counter(status_by_exit_code[code] for code in data.exit_code_by_key.values())
        files[path] = dict(sorted(counts.items()))
        for name, code in sorted(data.exit_code_by_key.items()):
            status = status_by_exit_code[code]
            if status in ("killed", "timeout", "caught by type check"):
                continue
            diff = get_diff_for_mutant(name, path=path) if status != "not checked" else ""
            removed = next((ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and ln[1:2] != "-"), "")
            others.append(
                {
                    "name": name,
                    "file": path,
                    "line": source_line(Path(path), removed) if removed else None,
                    "status": status,
                    "diff": one_line_diff(diff) if diff else "",
                }
            )
    return {"files": files, "mutants": others}


def summarise(data: dict, notes: dict) -> dict:
    total: Counter[str] = Counter()
    for counts in data["files"].values():
        total.update(counts)
    all_mutants = sum(total.values())
    tested = all_mutants - total["skipped"]
    score = (total["killed"] + total["timeout"]) / tested if tested else 0.0
    for mutant in data["mutants"]:
        note = notes.get(mutant["name"])
        if note is None:
            continue
        if note.get("diff") == mutant["diff"]:
            mutant["equivalent"] = note["reason"]
        else:
            mutant["stale_note"] = note["reason"]
    return {
        "tool": "mutmut 3.8.1",
        "partial": total["not checked"] > 0,
        "score": round(score, 4),
        "counts": dict(sorted(total.items())),
        "files": data["files"],
        "mutants": data["mutants"],
    }


def markdown(report: dict) -> str:
    counts = report["counts"]
    lines = [
        "# Mutation testing of the verdict code",
        "",
        "`nox -s mutation` (mutmut 3.8.1) mutates `pdmp/stats.py`, `pdmp/compare.py` and `pdmp/search.py`",
        "and runs the core tests that exercise them (`[tool.mutmut]` in pyproject.toml) against each mutant.",
        "Written by `tools/mutation_report.py`; the same data is in `summary.json`.",
        "",
    ]
    if report["partial"]:
        lines += [f"**Partial run**: {counts['not checked']} mutants were not checked yet.", ""]
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = sum(counts.values()) - counts.get("skipped", 0)
    lines += [
        f"**Score: {100 * report['score']:.1f}%** ({killed} of {tested} mutants killed; "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + ").",
        "",
        "| file | " + " | ".join(counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for path, file_counts in report["files"].items():
        lines.append(f"| `{path}` | " + " | ".join(str(file_counts.get(status, 0)) for status in counts) + " |")
    survivors = [
        m for m in report["mutants"] if m["status"] not in ("not checked", "no tests") and "equivalent" not in m
    ]
    equivalent = [m for m in report["mutants"] if "equivalent" in m]
    untested = Counter(function_of(m["name"]) for m in report["mutants"] if m["status"] == "no tests")

    def row(m: dict) -> str:
        where = f"{m['file']}:{m['line']}" if m["line"] else m["file"]
        diff = m["diff"].replace("|", "\\|").replace("`", "'")
        return f"| `{m['name']}` | {where} | {m['status']} | `{diff}` |"

    lines += ["", f"## Surviving mutants not explained ({len(survivors)})", ""]
    if survivors:
        lines += ["| mutant | where | status | change |", "|---|---|---|---|", *map(row, survivors)]
        stale = [m for m in survivors if "stale_note" in m]
        if stale:
            lines += ["", f"{len(stale)} of them carry a note in notes.json whose diff no longer matches (stale)."]
    else:
        lines.append("None.")
    lines += ["", f"## Mutants in code that no selected test runs ({sum(untested.values())})", ""]
    if untested:
        lines += ["| function | mutants |", "|---|---|"]
        lines += [f"| `{function}` | {count} |" for function, count in sorted(untested.items())]
    else:
        lines.append("None.")
    lines += ["", f"## Equivalent mutants ({len(equivalent)}): no observable change", ""]
    if equivalent:
        lines += ["| mutant | where | change | why it changes nothing |", "|---|---|---|---|"]
        for m in equivalent:
            where = f"{m['file']}:{m['line']}" if m["line"] else m["file"]
            diff = m["diff"].replace("|", "\\|").replace("`", "'")
            lines.append(f"| `{m['name']}` | {where} | `{diff}` | {m['equivalent']} |")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reported" / "mutation")
    args = parser.parse_args(argv)
    if not Path("mutants").is_dir():
        print("tools/mutation_report.py: no ./mutants/ here; run `mutmut run` (nox -s mutation) first", file=sys.stderr)
        return 2
    notes_path = args.out / "notes.json"
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    report = summarise(collect(), notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "summary.md").write_text(markdown(report))
    print(f"mutation score {100 * report['score']:.1f}% -> {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
