"""Mutation testing for qefleet: mutate the module under test one site at a time, run the
suite against each mutant, and print a JSON report.

Usage: python qefleet_mutants.py MODULE_FILE MODULE_NAME TEST_FILE BUDGET_S MAX_MUTANTS SEED

Operators: arithmetic (+ - * / // % **), comparison (< <= > >= == != in is), boolean
(and/or, dropping `not`), constants (numbers +1, booleans flipped, strings emptied),
return values (-> None) and condition negation (if, while, conditional expressions).
A mutant is killed when the suite fails or times out on it. Sites are sampled in a seeded
order; evaluation stops at MAX_MUTANTS or when the time budget is spent. The report names
the first failing test function of each killed mutant (`killers`, for minimising the
suite); `unattributed` counts kills no test is named for (timeouts).
"""
import ast
import concurrent.futures
import json
import os
import random
import shutil
import subprocess
import sys
import time

ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
         ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
           ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
           ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BOOL = {ast.And: ast.Or, ast.Or: ast.And}


class Mutator(ast.NodeTransformer):
    """Walks the tree in a fixed order, numbering mutation sites; applies site `target`."""

    def __init__(self, target=None):
        self.target = target
        self.sites = []

    def _site(self, node, operator, description):
        index = len(self.sites)
        self.sites.append({"line": getattr(node, "lineno", 0), "operator": operator,
                           "description": description})
        return index == self.target

    def visit_Expr(self, node):
        # Docstrings and bare string statements are not mutated.
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node
        return self.generic_visit(node)

    def visit_BinOp(self, node):
        self.generic_visit(node)
        swap = ARITH.get(type(node.op))
        if swap and self._site(node, "arithmetic", f"{type(node.op).__name__} -> {swap.__name__}"):
            node.op = swap()
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            swap = COMPARE.get(type(op))
            if swap and self._site(node, "comparison", f"{type(op).__name__} -> {swap.__name__}"):
                node.ops[i] = swap()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        swap = BOOL[type(node.op)]
        if self._site(node, "boolean", f"{type(node.op).__name__} -> {swap.__name__}"):
            node.op = swap()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._site(node, "boolean", "drop not"):
            return node.operand
        return node

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            if self._site(node, "constant", f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, (int, float)):
            if self._site(node, "constant", f"{value!r} -> {value + 1!r}"):
                return ast.copy_location(ast.Constant(value + 1), node)
        elif isinstance(value, str) and value:
            if self._site(node, "constant", f"{value[:20]!r} -> ''"):
                return ast.copy_location(ast.Constant(""), node)
        return node

    def visit_JoinedStr(self, node):
        return node  # f-string parts are not standalone constants

    def visit_Return(self, node):
        self.generic_visit(node)
        is_none = isinstance(node.value, ast.Constant) and node.value.value is None
        if node.value is not None and not is_none and self._site(node, "return", "return value -> None"):
            node.value = None
        return node

    def _negate_test(self, node, kind):
        if self._site(node, "condition", f"negate {kind} condition"):
            node.test = ast.UnaryOp(ast.Not(), node.test)

    def visit_If(self, node):
        self.generic_visit(node)
        self._negate_test(node, "if")
        return node

    def visit_While(self, node):
        self.generic_visit(node)
        self._negate_test(node, "while")
        return node

    def visit_IfExp(self, node):
        self.generic_visit(node)
        self._negate_test(node, "conditional")
        return node


def mutant_source(source, target):
    tree = ast.parse(source)
    mutator = Mutator(target)
    tree = ast.fix_missing_locations(mutator.visit(tree))
    return ast.unparse(tree), mutator.sites


def run_suite(directory, test_file, timeout):
    """("passed" | "failed" | "timeout", the first failing test function or None)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = directory
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "--tb=no", "-rfE", "-p", "no:cacheprovider", test_file],
            cwd=directory, env=env, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timeout", None
    if done.returncode == 0:
        return "passed", None
    return "failed", first_failing(done.stdout.decode("utf-8", "replace"))


def first_failing(output):
    """`FAILED test_x.py::TestC::test_f[1] - ...` -> `test_f`."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")) and "::" in line:
            name = line.split(" ", 1)[1].split(" - ")[0].rsplit("::", 1)[-1]
            return name.split("[")[0]
    return None


def prepare(work, name, module_rel, module_text, test_file):
    directory = os.path.join(work, name)
    target = os.path.join(directory, module_rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Packages of a dotted module need their __init__ files.
    parent = os.path.dirname(module_rel)
    while parent:
        open(os.path.join(directory, parent, "__init__.py"), "a").close()
        parent = os.path.dirname(parent)
    with open(target, "w") as f:
        f.write(module_text)
    shutil.copy(test_file, os.path.join(directory, os.path.basename(test_file)))
    return directory


def main():
    module_file, module_name, test_file, budget, max_mutants, seed = sys.argv[1:7]
    budget, max_mutants, seed = float(budget), int(max_mutants), int(seed)
    started = time.monotonic()
    source = open(module_file).read()
    module_rel = module_name.replace(".", os.sep) + ".py"
    work = os.path.abspath("qefleet_mutants")
    shutil.rmtree(work, ignore_errors=True)
    _, sites = mutant_source(source, None)
    report = {"sites": len(sites), "evaluated": 0, "killed": 0, "timeouts": 0,
              "survivors": [], "baseline_passed": False, "baseline_seconds": 0.0,
              "sampled": False, "killers": [], "unattributed": 0}
    base_dir = prepare(work, "baseline", module_rel, source, test_file)
    t0 = time.monotonic()
    baseline, _ = run_suite(base_dir, os.path.basename(test_file), max(5.0, budget))
    report["baseline_seconds"] = round(time.monotonic() - t0, 3)
    report["baseline_passed"] = baseline == "passed"
    if not report["baseline_passed"]:
        print(json.dumps(report))
        return
    timeout = max(1.0, 3 * report["baseline_seconds"] + 0.5)
    order = list(range(len(sites)))
    random.Random(seed).shuffle(order)
    if len(order) > max_mutants:
        order = order[:max_mutants]
        report["sampled"] = True
    original = ast.unparse(ast.parse(source))

    def evaluate(index):
        if time.monotonic() - started > budget:
            return index, None
        text, _ = mutant_source(source, index)
        if text == original:
            return index, "equivalent"
        directory = prepare(work, f"m{index}", module_rel, text, test_file)
        outcome = run_suite(directory, os.path.basename(test_file), timeout)
        shutil.rmtree(directory, ignore_errors=True)
        return index, outcome

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for index, outcome in pool.map(evaluate, order):
            if outcome is None:
                report["sampled"] = True
                continue
            if outcome == "equivalent":
                continue
            outcome, killer = outcome
            report["evaluated"] += 1
            if outcome == "passed":
                report["survivors"].append(sites[index])
            else:
                report["killed"] += 1
                report["timeouts"] += outcome == "timeout"
                if killer is None:
                    report["unattributed"] += 1
                elif killer not in report["killers"]:
                    report["killers"].append(killer)
    report["survivors"].sort(key=lambda s: s["line"])
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
