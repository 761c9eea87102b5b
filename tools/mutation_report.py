"""Write the mutation-testing report of ``nox -s mutation`` from mutmut's results in ./mutants/.

Runs in the session's venv (it imports mutmut 3.8). Writes ``summary.json`` (counts, score, every mutant
that was not killed, with its diff) and ``summary.md`` (the same for people) into ``--out``.

The score is mutmut's: (killed + timeout) / (all mutants - skipped). A surviving mutant explained in
``notes.json`` beside the report (``{"mutant name": {"diff": "<one-line diff>", "kind": "equivalent" or
"no verdict", "reason": "..."}}``) is listed under its kind with the reason; a note whose diff no longer
matches its mutant (the source moved) is reported as stale, and the mutant as not explained.
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


NOTE_KINDS = {
    "equivalent": "Equivalent mutants: no observable change",
    "no verdict": "Surviving mutants that change no verdict (what they change is named)",
}


def summarise(data: dict, notes: dict) -> dict:
    total: Counter[str] = Counter()
    for counts in data["files"].values():
        total.update(counts)
    tested = sum(total.values()) - total["skipped"]
    score = (total["killed"] + total["timeout"]) / tested if tested else 0.0
    for mutant in data["mutants"]:
        note = notes.get(mutant["name"])
        if note is None or mutant["status"] != "survived":
            continue
        if note.get("diff") == mutant["diff"] and note.get("kind") in NOTE_KINDS:
            mutant["note_kind"], mutant["note"] = note["kind"], note["reason"]
        else:
            mutant["stale_note"] = note.get("reason", "")
    return {
        "tool": "mutmut 3.8.1",
        "partial": total["not checked"] > 0,
        "score": round(score, 4),
        "counts": dict(sorted(total.items())),
        "files": data["files"],
        "mutants": data["mutants"],
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def markdown(report: dict) -> str:
    counts = report["counts"]
    lines = [
        "# Mutation testing of the verdict code",
        "",
        "`nox -s mutation` (mutmut 3.8.1) mutates `pdmp/stats.py`, `pdmp/compare.py` and `pdmp/search.py`",
        "and runs the core tests that exercise them (`[tool.mutmut]` in pyproject.toml) against each mutant.",
        "Written by `tools/mutation_report.py` (the same data: `summary.json`; the reasons: `notes.json`).",
        "",
    ]
    if report["partial"]:
        lines += [f"**Partial run**: {counts['not checked']} mutants were not checked yet.", ""]
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = sum(counts.values()) - counts.get("skipped", 0)
    lines += [
        f"**Score: {100 * report['score']:.1f}%** ({killed} of {tested} mutants killed or timed out; "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + ").",
        "",
        "| file | " + " | ".join(counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for path, file_counts in report["files"].items():
        lines.append(f"| `{path}` | " + " | ".join(str(file_counts.get(status, 0)) for status in counts) + " |")

    def where(m: dict) -> str:
        return f"{m['file']}:{m['line']}" if m["line"] else m["file"]

    survived = [m for m in report["mutants"] if m["status"] not in ("not checked", "no tests")]
    unexplained = [m for m in survived if "note_kind" not in m]
    lines += ["", f"## Surviving mutants not explained ({len(unexplained)})", ""]
    if unexplained:
        lines += ["| mutant | where | status | change |", "|---|---|---|---|"]
        lines += [f"| `{m['name']}` | {where(m)} | {m['status']} | `{_cell(m['diff'])}` |" for m in unexplained]
        stale = [m for m in unexplained if "stale_note" in m]
        if stale:
            lines += ["", f"{len(stale)} of them carry a note in notes.json whose diff no longer matches (stale)."]
    else:
        lines.append("None.")
    for kind, title in NOTE_KINDS.items():
        explained = [m for m in survived if m.get("note_kind") == kind]
        lines += ["", f"## {title} ({len(explained)})", ""]
        if explained:
            lines += ["| mutant | where | change | why |", "|---|---|---|---|"]
            lines += [f"| `{m['name']}` | {where(m)} | `{_cell(m['diff'])}` | {m['note']} |" for m in explained]
        else:
            lines.append("None.")
    untested = Counter(function_of(m["name"]) for m in report["mutants"] if m["status"] == "no tests")
    lines += ["", f"## Mutants in code that no selected test runs ({sum(untested.values())})", ""]
    if untested:
        lines += ["| function | mutants |", "|---|---|"]
        lines += [f"| `{function}` | {count} |" for function, count in sorted(untested.items())]
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
