"""python -m exercises [list | start | check NAME|all] [--dir my_exercises] [--json FILE]

    list                 the exercises, in order, and where each stands in your folder
    start                copy the stubs into your folder (never overwrites your work)
    check attention      check one exercise; exit code 0 when it passes
    check all            check every exercise and print a table (what an instructor grades with)
    pack DIR             write a student pack to DIR: stubs, checker and cases, no answers (instructors)
"""

import argparse
import json
import sys
from pathlib import Path

from exercises import EXERCISES, PLUGS, WORKSPACE, check_all_isolated, exercise, start, summary
from exercises.isolate import TIME_LIMIT


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m exercises", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("command", nargs="?", default="list", choices=["list", "start", "check", "pack"],
                   help="what to do (default: list)")
    p.add_argument("name", nargs="?", default="all",
                   help="the exercise to check, or all (default: all); for pack, the folder to write")
    p.add_argument("--dir", default=WORKSPACE, help=f"the folder with your exercise files (default: {WORKSPACE})")
    p.add_argument("--json", help="also write the results to this JSON file (for grading)")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT,
                   help=f"seconds of CPU time each exercise's check may use before it is stopped, and at most 3 times as "
                        f"long on the clock (default: {TIME_LIMIT})")
    return p.parse_args(argv)


def table(reports):
    rows = [("#", "exercise", "result", "cases")]
    for number, (name, report) in enumerate(reports.items(), 1):
        result = "passed" if report.ok else "not implemented yet" if report.not_implemented else "FAILED"
        rows.append((str(number), name, result, f"{report.passed}/{len(report.exercise.cases)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "pack":
        from exercises.pack import write_pack

        if args.name == "all":
            raise SystemExit("error: say where to write the pack: python -m exercises pack DIR")
        target = write_pack(args.name)
        print(f"wrote a student pack to {target.parent}/: stubs, checker and stored cases, no model/ and no answers")
        return 0
    folder = Path(args.dir)
    if args.command == "start" or not folder.exists():
        copied = start(folder)
        print(f"copied {len(copied)} exercise stubs to {folder}/: start with {folder / 'attention.py'}"
              if copied else f"{folder}/ already has every exercise file")
        if args.command == "start":
            return 0
    if args.command == "list":
        for number, ex in enumerate(EXERCISES.values(), 1):
            plug = "  (can train the captioner: --student-code " + ex.name + ")" if ex.name in PLUGS else ""
            print(f"{number}. {ex.name:10} {ex.title}, in {folder / ex.file}{plug}")
        return 0
    names = list(EXERCISES) if args.name == "all" else [exercise(args.name).name]
    reports = check_all_isolated(names, folder, args.time_limit)  # each in a process of its own (exercises/isolate.py)
    if len(names) == 1:
        print(summary(reports[names[0]]))
    else:
        for report in reports.values():
            if not report.ok and not report.not_implemented:
                print(summary(report) + "\n")
        print(table(reports))
        print(f"\n{sum(r.ok for r in reports.values())} of {len(reports)} exercises passed")
    if args.json:  # written whatever the students' files did
        Path(args.json).write_text(json.dumps({name: {"passed": r.ok, "cases_passed": r.passed,
                                                      "cases": len(r.exercise.cases), "message": r.message}
                                               for name, r in reports.items()}, indent=1))
    return 0 if all(r.ok for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
