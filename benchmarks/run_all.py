"""Run the benchmarks listed in manifest.yaml and assemble BENCHMARKS.md from their sections.

    python benchmarks/run_all.py                   # the quick sections (minutes), then assemble
    python benchmarks/run_all.py --all             # every section, the long grids too (they resume)
    python benchmarks/run_all.py --only export imp # these sections
    python benchmarks/run_all.py --list            # the sections, their kind and inputs
    python benchmarks/run_all.py --dry-run --all   # print the commands, run nothing
    python benchmarks/run_all.py --assemble-only   # only rebuild BENCHMARKS.md from results/

manifest.yaml names, per section, the exact commands that produced results/<section>.md and the
inputs they need. Missing inputs are reported before anything runs (one line each, with how to
make them) and the exit status is 2; a failing command stops the run with its exit status.
After a section's commands succeed, the date, the machine (CPU model, cores, torch version) and
the load average before/after are appended to its results/<section>.md and kept in
results/<section>.run.json; the header of BENCHMARKS.md lists when and where every section was
last written.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from _common import RESULTS, machine_facts
from prunekit.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.yaml"
OUTPUT = HERE.parent / "BENCHMARKS.md"


@dataclass
class Input:
    """A file or folder a section needs (or, with ``absent``, must not find)."""

    path: str
    make: str
    absent: bool = False
    command: Optional[str] = None  # a quick benchmarks/ command that makes it (run when missing)

    def resolved(self) -> Path:
        return Path(self.path) if os.path.isabs(self.path) else HERE / self.path

    def problem(self) -> Optional[str]:
        """Why this input stops the section, or None when it is fine."""
        exists = self.resolved().exists()
        if self.absent and exists:
            return f"{self.path} exists: {self.make}"
        if not self.absent and not exists and self.command is None:
            return f"missing {self.path}: make it with {self.make}"
        return None

    def needs_making(self) -> bool:
        """Missing, and the manifest says which command makes it."""
        return not self.absent and self.command is not None and not self.resolved().exists()


@dataclass
class Section:
    name: str
    title: str
    kind: str  # "quick" or "long"
    commands: List[str]
    inputs: List[Input] = field(default_factory=list)
    data: List[str] = field(default_factory=list)
    note: str = ""

    def argv(self, command: str) -> List[str]:
        """``command`` as the argument list run_all executes (from benchmarks/)."""
        script, *args = shlex.split(command)
        return [sys.executable, str(HERE / script), *args]


def load_manifest(path: Path = MANIFEST) -> Dict[str, Section]:
    """The manifest's sections by name, in BENCHMARKS.md order."""
    raw = yaml.safe_load(path.read_text())["sections"]
    sections = {}
    for name, entry in raw.items():
        if entry.get("kind") not in ("quick", "long"):
            raise ValueError(f"{path}: section {name}: kind must be quick or long, not {entry.get('kind')!r}")
        sections[name] = Section(name=name, title=entry["title"], kind=entry["kind"], commands=list(entry["commands"]),
                                 inputs=[Input(**i) for i in entry.get("inputs", [])],
                                 data=list(entry.get("data", [])), note=entry.get("note", ""))
    return sections


def preflight(chosen: List[Section]) -> List[str]:
    """One line per reason a chosen section cannot run (missing script or input)."""
    problems = []
    for s in chosen:
        for command in s.commands:
            script = shlex.split(command)[0]
            if not (HERE / script).is_file():
                problems.append(f"section {s.name}: no script benchmarks/{script}")
        problems += [f"section {s.name}: {p}" for p in (i.problem() for i in s.inputs) if p]
        for i in s.inputs:
            script = shlex.split(i.command)[0] if i.command else None
            if script and not (HERE / script).is_file():
                problems.append(f"section {s.name}: input {i.path}: no script benchmarks/{script}")
    return problems


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _machine_line(facts: dict) -> str:
    return f"{facts['cpu']}, {facts['cores']} cores, torch {facts['torch']}, Python {facts['python']}"


def _run(section: Section, command: str) -> None:
    done = subprocess.run(section.argv(command), cwd=HERE)
    if done.returncode:
        sys.exit(f"run_all.py: section {section.name}: `python {command}` failed with exit status {done.returncode}")


def run_section(section: Section) -> None:
    """Run the section's commands in order, then record when and where they ran."""
    for i in section.inputs:
        if i.needs_making():
            print(f"[{section.name}] making {i.path}: python {i.command}", flush=True)
            _run(section, i.command)
            if not i.resolved().exists():
                sys.exit(f"run_all.py: section {section.name}: `python {i.command}` did not make {i.path}")
    before = machine_facts()
    for command in section.commands:
        print(f"[{section.name}] python {command}", flush=True)
        _run(section, command)
    after = machine_facts()
    record = {"section": section.name, "date": _now(), "commands": [f"python {c}" for c in section.commands],
              "machine": before, "load_after": after["load"]}
    atomic_write_json(RESULTS / f"{section.name}.run.json", record, indent=1)
    md = RESULTS / f"{section.name}.md"
    line = (f"Regenerated by `python benchmarks/run_all.py` on {record['date']}: {_machine_line(before)}; "
            f"load average {before['load']:.2f} before, {after['load']:.2f} after.")
    atomic_write_text(md, md.read_text().rstrip() + "\n\n" + line + "\n")


def _written(name: str) -> str:
    """When results/<name>.md was last written: its run record, else its last commit's date."""
    record = RESULTS / f"{name}.run.json"
    if record.exists():
        r = yaml.safe_load(record.read_text())  # JSON is YAML
        return f"{r['date']} ({_machine_line(r['machine'])}, load {r['machine']['load']:.2f})"
    try:
        date = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(RESULTS / f"{name}.md")], cwd=HERE,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        date = ""
    return f"{date} (commit; the section states its machine)" if date else "unknown"


def header(sections: Dict[str, Section], names: List[str]) -> str:
    facts = machine_facts()
    rows = "\n".join(f"| {n} | {sections[n].kind if n in sections else '-'} | {_written(n)} |" for n in names)
    return f"""# Benchmarks

Measured on this project's machines (CPU only), reported as medians and as ratios measured side by
side in one run. Each section names the command that produced it, and `benchmarks/manifest.yaml`
lists every section's exact commands and the inputs they need. `make bench` runs the quick
sections and reassembles this file; `python benchmarks/run_all.py --all` also runs the long
grids (they resume from their caches in `benchmarks/results/`), `--only SECTION` runs one,
`--dry-run` prints the commands.

The accuracy grids ran as one thread per job, often two jobs at a time beside other work: their
accuracy figures do not depend on that, but their recorded seconds per epoch do, so compare
speed only through the side-by-side sections.

Assembled on {_now()} on {_machine_line(facts)}, load average {facts['load']:.2f}.
When each section was last written (its run record from run_all.py, else the last commit of
its results file):

| section | kind | written |
|---|---|---|
{rows}
"""


def assemble(sections: Dict[str, Section]) -> None:
    """Write BENCHMARKS.md: the header, then results/<section>.md in manifest order (sections
    without a manifest entry follow alphabetically)."""
    found = {p.stem: p.read_text() for p in RESULTS.glob("*.md")}
    names = [n for n in sections if n in found] + sorted(n for n in found if n not in sections)
    atomic_write_text(OUTPUT, header(sections, names) + "\n" + "\n".join(found[n] for n in names))
    print(f"wrote {OUTPUT.name} ({len(names)} sections)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pick = ap.add_mutually_exclusive_group()
    pick.add_argument("--quick", action="store_true", help="the quick sections (the default)")
    pick.add_argument("--all", action="store_true", help="every section, the long ones too")
    pick.add_argument("--only", nargs="+", metavar="SECTION", help="these sections")
    ap.add_argument("--list", action="store_true", help="list the sections and exit")
    ap.add_argument("--dry-run", action="store_true", help="print the commands (and input problems), run nothing")
    ap.add_argument("--assemble-only", action="store_true", help="only rebuild BENCHMARKS.md from results/")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    sections = load_manifest()
    if args.list:
        for s in sections.values():
            needs = ", ".join(s.data + [i.path + (" (must not exist)" if i.absent else "") for i in s.inputs])
            print(f"{s.name:<20} {s.kind:<5} {len(s.commands)} command(s)  {s.title}" + (f"  [needs {needs}]" if needs else ""))
        return 0
    if args.assemble_only:
        assemble(sections)
        return 0
    if args.only:
        unknown = [n for n in args.only if n not in sections]
        if unknown:
            sys.exit(f"run_all.py: unknown section(s) {', '.join(unknown)}; choose from {', '.join(sections)}")
        chosen = [sections[n] for n in args.only]
    else:
        chosen = [s for s in sections.values() if args.all or s.kind == "quick"]
    problems = preflight(chosen)
    if args.dry_run:
        for s in chosen:
            print(f"# {s.name} ({s.kind}): {s.title}")
            for i in s.inputs:
                if i.needs_making():
                    print(f"cd benchmarks && python {i.command}    # makes {i.path}")
            for c in s.commands:
                print(f"cd benchmarks && python {c}")
        for p in problems:
            print(f"# would stop: {p}")
        return 0
    if problems:
        for p in problems:
            print(f"run_all.py: {p}", file=sys.stderr)
        return 2
    for s in chosen:
        run_section(s)
    assemble(sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
