"""Mutation testing of the modules that guard the gateway's rules, one mutmut 3 run per module.

Each module is mutated in its own copy of the source (under `mutants/`, git-ignored), with the
tests that exercise it (end-to-end ones included: see sitecustomize.py here), so runs never
touch the work tree and a module's score depends only on its own tests. The score is
killed / (all mutants): a mutant no test runs counts as surviving. "Wording aside" leaves out
the mutants that only change prose (a string literal with a space in it) or a log call.

    scripts/mutation [--rev REV] [--jobs N] [--score-only] [MODULE ...]

--rev mutates a commit's tree instead of the work tree (e.g. to measure "before").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Target:
    path: str  # the source file mutated
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # only these functions' mutants (mutmut name patterns)


TARGETS: dict[str, Target] = {
    "redaction": Target("gateway/upstream/redaction.py", (
        "tests/upstream/test_redaction.py", "tests/upstream/test_mapping.py")),
    "jobs": Target("gateway/jobs.py", ("tests/test_jobs.py", "tests/upstream/test_lookup.py")),
    "mapping": Target("gateway/upstream/mapping.py", (
        "tests/upstream/test_mapping.py", "tests/upstream/test_lookup.py",
        "tests/upstream/test_retry.py")),
    "retry": Target("gateway/upstream/retry.py", (
        "tests/upstream/test_retry.py", "tests/upstream/test_retry_e2e.py")),
    "breaker": Target("gateway/upstream/breaker.py", (
        "tests/upstream/test_breaker.py", "tests/upstream/test_breaker_e2e.py")),
    "suppression": Target("gateway/audit/suppression.py", (
        "tests/audit/test_suppression.py", "tests/telemetry/test_pipes.py")),
    "inflight": Target("gateway/access/inflight.py", (
        "tests/access/test_inflight.py", "tests/upstream/test_retry_e2e.py::"
        "test_max_in_flight_refuses_the_extra_cancel_with_429_and_releases_it")),
    "identity": Target("gateway/access/identity.py", ("tests/access/test_identity.py",)),
    "limits": Target("gateway/access/limits.py", (
        "tests/access/test_limits.py", "tests/server/test_app.py")),
    "fast_chain": Target("gateway/audit/fast_chain.py", (
        "tests/audit/test_fast_chain.py", "tests/audit/test_fast_fleet.py")),
    "fast_fleet": Target("gateway/audit/fast_fleet.py", (
        "tests/audit/test_fast_fleet.py", "tests/audit/test_fleet.py")),
    "row_runs": Target("gateway/audit/row_runs.py", (
        "tests/audit/test_row_runs.py", "tests/audit/test_query.py")),
    "grouping": Target("gateway/audit/grouping.py", (
        "tests/audit/test_grouping.py", "tests/audit/test_fleet.py")),
    "bulk_body": Target("gateway/cancel/bulk_request.py", ("tests/cancel/test_bulk.py",), (
        "parse_request", "_unique_keys", "_refuse_constant", "_shown")),
}

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # a failing test, a timeout, the type checker
NOT_RUN = {None, 34}  # not checked, skipped


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation")
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--rev", help="mutate this commit's tree instead of the work tree")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--score-only", action="store_true",
                        help="score the last run's results again, without running mutmut")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; known: {', '.join(TARGETS)}")
    label = args.rev or "worktree"
    rows = []
    for name in args.modules or list(TARGETS):
        work = ROOT / "mutants" / label.replace("/", "_") / name
        started = time.monotonic()
        if not args.score_only:
            print(f"{name}: mutating {TARGETS[name].path} in {work.relative_to(ROOT)} ...",
                  file=sys.stderr, flush=True)
        target = TARGETS[name]
        result = (score(work, target, patterns_of(target)) if args.score_only
                  else run_one(target, work, args.rev, args.jobs))
        rows.append((name, result, time.monotonic() - started))
    print(f"\nmutation scores ({label}):")
    print(f"{'module':<12} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} "
          f"{'score':>6} {'wording aside':>13} {'time':>6}")
    for name, result, seconds in rows:
        print(f"{name:<12} {result.total:>7} {result.killed:>6} {result.survived:>8} "
              f"{result.no_tests:>8} {result.percent:>5.0f}% "
              f"{result.percent_without_wording:>12.0f}% {seconds:>5.0f}s")
    print("\nsurvivors, with their diffs: mutants/<label>/<module>/survivors.txt")
    return 0


@dataclass
class Score:
    total: int = 0
    killed: int = 0
    survived: int = 0
    no_tests: int = 0
    wording_survivors: int = 0
    wording_total: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0

    @property
    def percent_without_wording(self) -> float:
        counted = self.total - self.wording_total
        killed = self.killed - (self.wording_total - self.wording_survivors)
        return 100.0 * killed / counted if counted else 100.0


def run_one(target: Target, work: Path, rev: str | None, jobs: int) -> Score:
    copy_source(work, rev)
    tests = [t for t in target.tests if (work / t.partition("::")[0]).exists()]
    mutmut_config = {
        "source_paths": ["gateway"],
        "only_mutate": [target.path],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "gateway_mutation_hits"],
        "also_copy": ["config.example.toml"],
        "use_git_change_detection": False,
    }
    with (work / "pyproject.toml").open("a", encoding="utf-8") as pyproject:
        pyproject.write("\n[tool.mutmut]\n")
        for key, value in mutmut_config.items():
            pyproject.write(f"{key} = {json.dumps(value)}\n")
    patterns = patterns_of(target)
    env = {**os.environ, "PYTHONPATH": str(SUPPORT),
           "GATEWAY_MUTATION_HITS": str(work / "subprocess-hits.txt")}
    env.pop("MUTANT_UNDER_TEST", None)
    with (work / "mutmut.log").open("w") as log:
        subprocess.run([str(ROOT / ".venv" / "bin" / "mutmut"), "run", "--max-children",
                        str(jobs), *patterns], cwd=work, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=False)
    return score(work, target, patterns)


def patterns_of(target: Target) -> list[str]:
    module = target.path.removesuffix(".py").replace("/", ".")
    return [f"{module}.x_{f}__mutmut_*" for f in target.functions]


def copy_source(work: Path, rev: str | None) -> None:
    """A fresh copy of the tree: the work tree's tracked and new files, or a commit's."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(work, filter="data")
        return
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    # The compiled loops this tree built (git ignores them): with them the copy's tests run
    # both ways, as the work tree's do, so the Python that drives them is tested too.
    for built in (ROOT / "gateway").rglob("*.so"):
        shutil.copy2(built, work / built.relative_to(ROOT))


def score(work: Path, target: Target, patterns: list[str]) -> Score:
    import fnmatch

    meta = work / "mutants" / (target.path + ".meta")
    result = Score()
    if not meta.exists():
        print(f"  no results: see {work / 'mutmut.log'}", file=sys.stderr)
        return result
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    if patterns:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    survivors = []
    cwd = Path.cwd()
    os.chdir(work)  # mutmut's helpers read `mutants/` relative to the working directory
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        for name, code in sorted(codes.items()):
            if code in NOT_RUN:
                continue
            diff = get_diff_for_mutant(name, path=target.path)
            wording = is_wording(diff)
            result.total += 1
            result.wording_total += wording
            if code in KILLED:
                result.killed += 1
                continue
            result.no_tests += code in (5, 33)
            result.survived += code not in (5, 33)
            result.wording_survivors += wording
            kind = "wording" if wording else ("no tests" if code in (5, 33) else "survived")
            survivors.append(f"## {name} ({kind})\n{diff}\n")
    finally:
        os.chdir(cwd)
    (work / "survivors.txt").write_text("\n".join(survivors))
    return result


def is_wording(diff: str) -> bool:
    """Whether a mutant only changes prose: every line it changes is part of a log call, or
    differs from the original only in string literals that hold a space (messages), changed or
    made None."""
    body = [line for line in diff.splitlines()
            if not line.startswith(("---", "+++", "@@"))]
    removed: list[str] = []
    in_log, depth = False, 0
    logged: list[bool] = []
    for line in body:
        if line.startswith("+"):
            continue
        text = line[1:]
        if not in_log and text.strip().startswith("log."):
            in_log, depth = True, 0
        depth += text.count("(") - text.count(")")
        if line.startswith("-"):
            removed.append(text)
            logged.append(in_log)
        if in_log and depth <= 0:
            in_log = False
    added = [line[1:] for line in body if line.startswith("+")]
    if not removed:
        return False
    if all(logged):
        return True
    if len(removed) != len(added):
        return _prose_made_none(removed, added)
    for before, after in zip(removed, added, strict=True):
        old, new = _tokens(before), _tokens(after)
        if old is None or new is None or len(old) != len(new):
            return False
        for (kind_a, text_a), (kind_b, text_b) in zip(old, new, strict=True):
            if (kind_a, text_a) == (kind_b, text_b):
                continue
            prose = kind_a == tokenize.STRING and " " in text_a
            if not (prose and (kind_b == tokenize.STRING or text_b == "None")):
                return False
    return True


def _prose_made_none(removed: list[str], added: list[str]) -> bool:
    """A message written over several lines, replaced by None."""
    punctuation = {",", "(", ")", "+"}
    for line in removed:
        tokens = _tokens(line)
        if tokens is None or not all(
                (kind == tokenize.STRING and " " in text) or text in punctuation
                for kind, text in tokens):
            return False
    return all((_tokens(line) or [(0, "?")]) and all(
        text == "None" or text in punctuation for _, text in _tokens(line) or [(0, "?")])
        for line in added)


def _tokens(line: str) -> list[tuple[int, str]] | None:
    """The line's tokens; a continuation line (an unmatched bracket) is read as far as it goes."""
    found: list[tuple[int, str]] = []
    tokens = tokenize.generate_tokens(io.StringIO(line.strip()).readline)
    try:
        for token in tokens:
            if token.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
                found.append((token.type, token.string))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        if not found:
            return None
    return found


if __name__ == "__main__":
    sys.exit(main())
