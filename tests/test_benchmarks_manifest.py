"""benchmarks/manifest.yaml covers every BENCHMARKS.md section with commands its scripts accept.

Cheap: the scripts are imported and their argument parsers checked, nothing is run. A script's
parser is built inside its ``main()``, so ``main()`` is called with ``parse_args`` swapped for a
function that hands the parser back before anything else happens.
"""
import argparse
import importlib
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCH))  # the scripts import _common from their own folder
    yield
    sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def sections(bench_path):
    return importlib.import_module("run_all").load_manifest()


def _parser_of(script: str) -> argparse.ArgumentParser:
    module = importlib.import_module(Path(script).stem)

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            module.main()
        except _Captured as got:
            return got.parser
    raise AssertionError(f"{script}: main() returned without parsing its arguments")


def test_every_results_section_has_a_manifest_entry(sections):
    on_disk = {p.stem for p in (BENCH / "results").glob("*.md")}
    assert on_disk, "no sections in benchmarks/results"
    assert on_disk <= set(sections), f"sections without a manifest entry: {sorted(on_disk - set(sections))}"
    assert all(s.kind in ("quick", "long") and s.commands for s in sections.values())


def test_each_section_names_its_last_manifest_command(sections):
    # The section's own text quotes the command that wrote it (imp lists all eight).
    for name, s in sections.items():
        text = (BENCH / "results" / f"{name}.md").read_text().replace("python benchmarks/", "python ")
        assert f"python {s.commands[-1]}" in text, f"{name}: results/{name}.md does not name `{s.commands[-1]}`"


def test_every_command_is_accepted_by_its_script(sections):
    parsers = {}
    for name, s in sections.items():
        # the commands that make missing inputs too (e.g. export's dense checkpoint)
        for command in s.commands + [i.command for i in s.inputs if i.command]:
            script, *args = shlex.split(command)
            assert (BENCH / script).is_file(), f"{name}: no script benchmarks/{script}"
            if script not in parsers:
                parsers[script] = _parser_of(script)
            try:
                parsers[script].parse_args(args)
            except SystemExit:
                pytest.fail(f"{name}: {script} rejects the arguments of `{command}`")


def test_run_all_reports_a_missing_input(sections, tmp_path):
    run_all = importlib.import_module("run_all")
    missing = run_all.Input(path=str(tmp_path / "nope"), make="make it")
    present = run_all.Input(path=str(tmp_path), make="remove it", absent=True)
    section = run_all.Section(name="x", title="x", kind="quick", commands=["run_all.py"], inputs=[missing, present])
    problems = run_all.preflight([section])
    assert len(problems) == 2 and "missing" in problems[0] and "make it" in problems[0]
    assert "exists" in problems[1]
