"""Run candidate calls against the module under test and report what each did, for
qefleet's local generator. Usage: python qefleet_probe.py REQUEST.json

REQUEST: {"module": "pkg.mod", "alias": "mod", "module_file": "/abs/path/mod.py",
          "calls": [{"id": 0, "setup": "obj = mod.C()", "expr": "obj.f(1)",
                     "observers": ["obj.draw()"]}],
          "tables": {"0": [12, 13]}, "timeout": 1.0, "budget": 30.0, "samples": true}
Prints one JSON line per call: kind is "value" (deterministic, assertable result),
"object" (an instance whose repr shows only its address: "fields" are its public literal
attributes), "self" (a method returned its own instance), "raises" (deterministic
exception, with a "match" pattern when a `raise` of the module raised it and its message
is stable), or "skip" (nondeterministic, too slow, unassertable, or the setup itself
failed); "lines" are the module's lines the setup and the call executed, "call_lines"
those of the call alone; "state" lists the instance's public attributes after the call,
[name, repr, is_float], and "observed" the observers' values, [expr, repr, is_literal,
is_float], when they are deterministic. "consumed": the call returned an iterator, which
was run to its end (at most 1000 items) and is asserted as `list(...)`.

With "samples": true it first prints {"samples": [...]}: strings (as Python source) that
the module's regular expressions match (compiled ones at its top level, regex strings in
its tables), sampled from their parsed form.

With "mutants": {"file": "/abs/qefleet_mutants.py", "killed": [site, ...], "budget": s}
the probe then runs the assertable calls again against mutants of the module (the
mutation operators of qefleet_mutants.py, one site each, sites on lines the call
executes, those in "killed" skipped) and prints {"kills_of": id, "sites": [...]} for a
call whose test would fail on those mutants: a call earns its place in the suite by the
mutants it tells apart, not only by the lines it reaches.
"""
import ast
import importlib.util
import asyncio  # noqa: F401  (async targets are called through asyncio.run)
import collections.abc
import contextlib
import datetime
import importlib
import io
import itertools
import json
import math
import pickle
import random
import re
import signal
import sys
import time
import types


class ProbeTimeout(BaseException):
    pass


# Set when the alarm fired during a run: the module may have turned the timeout into
# another exception (a `with suppress(...)` around an endless loop raises TypeError on
# the way out), which must not be asserted as the call's behaviour.
ALARM = {"fired": False}


def on_alarm(signum, frame):
    ALARM["fired"] = True
    raise ProbeTimeout()


def literal(value, text):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return False
    try:
        back = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return type(back) is type(value) and back == value


def has_float(value):
    if isinstance(value, float):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(has_float(v) for v in value)
    if isinstance(value, dict):
        return any(has_float(v) for v in value.values())
    return False


def run_once(setup, code, namespace, module_file, timeout, trace=True):
    # Returns the outcome, the trace (the call's lines, all lines, the call's arcs), the
    # namespace after the run, and whether the call returned an iterator it consumed.
    # Lines of the call under test, apart from those its setup ran: a case is kept for
    # what its own call reaches.
    lines = set()
    setup_lines = set()
    current = [setup_lines]
    # Arcs (from, to) between the lines a frame executed, as coverage.py counts branches:
    # entry from -first line, exit to -first line. A call taking a branch no kept call
    # took is worth a test even when every line it ran was run before.
    arcs = set()
    setup_arcs = set()
    current_arcs = [setup_arcs]
    namespace = dict(namespace)

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != module_file:
            return None
        entry = -frame.f_code.co_firstlineno
        prev = [entry]

        def local(frame, event, arg):
            if event == "line":
                line = frame.f_lineno
                current[0].add(line)
                current_arcs[0].add((prev[0], line))
                prev[0] = line
            elif event == "return":
                current_arcs[0].add((prev[0], entry))
            return local

        return local

    outcome = None
    consumed = [False]
    argv = list(sys.argv)  # a setup may set the command line; the next call gets it back
    # Modules drawing random numbers give reproducible values from one seed; the
    # generated tests seed the same way (an autouse fixture).
    random.seed(0)
    ALARM["fired"] = False
    signal.setitimer(signal.ITIMER_REAL, timeout)
    if trace:
        sys.settrace(tracer)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                if setup is not None:
                    exec(setup, namespace)
            except ProbeTimeout:
                raise
            except BaseException as exc:
                outcome = ("setup", exc)
            if outcome is None:
                current[0] = lines
                current_arcs[0] = arcs
                value = eval(code, namespace)
                if is_iterator(value):
                    # An iterator is asserted through `list(...)`: consumed here, traced.
                    consumed[0] = True
                    value = list(itertools.islice(value, MAX_ITEMS + 1))
                    if len(value) > MAX_ITEMS:
                        raise ProbeTimeout()  # endless, or too long to assert
                outcome = ("value", value)
    except ProbeTimeout:
        outcome = ("timeout", None)
    except SystemExit as exc:
        # A command line's entry point exits (`--help`, a usage error): `pytest.raises`.
        outcome = ("raises", exc)
    except KeyboardInterrupt as exc:
        outcome = ("exit", exc)
    except BaseException as exc:  # the module under test may raise anything
        outcome = ("raises", exc)
    finally:
        sys.settrace(None)
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.argv = argv
    if ALARM["fired"]:
        outcome = ("timeout", None)
    trace = (sorted(lines), sorted(lines | setup_lines), sorted(arcs))
    return outcome, trace, namespace, consumed[0]


MAX_ITEMS = 1000


def is_iterator(value):
    """An iterator (a generator, `map`, `zip`...) the call returned, not a file."""
    return (isinstance(value, collections.abc.Iterator)
            and not isinstance(value, (io.IOBase, str, bytes)))


def state_of(obj):
    """The instance's public attributes whose values are literals, as (name, repr, float)."""
    try:
        fields = vars(obj) if obj is not None else {}
    except TypeError:
        return []
    out = []
    for name, value in sorted(fields.items()):
        if name.startswith("_") or callable(value):
            continue
        try:
            text = repr(value)
        except BaseException:
            continue
        if len(text) <= 200 and literal(value, text):
            out.append([name, text, has_float(value)])
    return out[:4]


def exception_name(exc, module, alias):
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__name__
    if cls.__module__ == module.__name__:
        return f"{alias}.{cls.__qualname__}"
    return None


def describe(call, module, alias, namespace, module_file, timeout):
    entry = {"id": call["id"], "kind": "skip", "lines": []}
    try:
        code = compile(call["expr"], "<call>", "eval")
        setup = compile(call["setup"], "<setup>", "exec") if call.get("setup") else None
    except SyntaxError:
        return entry, None
    first, lines, scope, consumed = run_once(setup, code, namespace, module_file, timeout)
    if first[0] == "timeout":
        entry["kind"] = "timeout"
        return entry, None
    if consumed:
        entry["consumed"] = True
    state = state_of(scope.get("obj"))
    observers = call.get("observers") or []
    seen = observe(observers, scope, timeout) if first[0] == "value" else []
    second, _, scope_again, _ = run_once(setup, code, namespace, module_file, timeout)
    entry["call_lines"], entry["lines"], entry["arcs"] = lines
    entry["state"] = state if state == state_of(scope_again.get("obj")) else []
    if seen:
        again = dict((o[0], o) for o in observe(observers, scope_again, timeout))
        entry["observed"] = [o for o in seen if again.get(o[0]) == o]
    kind, value = first
    if kind in ("timeout", "exit", "setup") or second[0] != kind:
        return entry, None
    if kind == "raises":
        name = exception_name(value, module, alias)
        if name is None or type(second[1]) is not type(value):
            return entry, None
        entry.update(kind="raises", exception=name)
        pattern = message_pattern(value) if raised_by_module(value, module_file) else None
        if pattern is not None and pattern == message_pattern(second[1]):
            entry["match"] = pattern
        return entry, (setup, code, "raises", type(value))
    try:
        text, again = repr(value), repr(second[1])
    except BaseException:
        return entry, None
    if value is not None and value is scope.get("obj") and second[1] is scope_again.get("obj"):
        # A fluent method returns its instance: `assert obj.add_row([1]) is obj`.
        entry.update(kind="self")
        return entry, (setup, code, "self", None)
    if text != again or not shows_value(text):
        # An instance that does not show its value: its public attributes can.
        fields = state_of(value) if not isinstance(value, type) else []
        if fields and fields == state_of(second[1]):
            entry.update(kind="object", fields=fields)
            return entry, (setup, code, "object", value)
        return entry, None
    entry.update(kind="value", repr=text, literal=literal(value, text), float=has_float(value))
    return entry, (setup, code, "value", value)


RAISE_LINES = {}


def raised_by_module(exc, module_file):
    """Whether a `raise` statement of the module raised `exc`: its message is the module's
    own. Messages of exceptions the interpreter raises (`list index out of range`) change
    between Python versions and are not asserted."""
    if module_file not in RAISE_LINES:
        lines = set()
        try:
            for node in ast.walk(ast.parse(open(module_file).read())):
                if isinstance(node, ast.Raise):
                    lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        except (OSError, SyntaxError, ValueError):
            pass
        RAISE_LINES[module_file] = lines
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (tb is not None and tb.tb_frame.f_code.co_filename == module_file
            and tb.tb_lineno in RAISE_LINES[module_file])


REGEX_SPECIAL = frozenset(".^$*+?{}[]\\|()")


def message_pattern(exc):
    """A `pytest.raises(match=...)` pattern for the exception's message (its first line,
    at most 80 characters, escaped) as Python source, or None when it has none worth
    asserting."""
    try:
        text = str(exc)
    except BaseException:
        return None
    text = text.splitlines()[0][:80] if text.strip() else ""
    if not text.strip() or " at 0x" in text:
        return None
    # Escaped as `re.escape` does, less the spaces it escapes too (pytest never searches
    # in verbose mode): `match=r'amount must be positive \(got -1\)'` reads as the message.
    pattern = "".join("\\" + c if c in REGEX_SPECIAL else c for c in text)
    if "'" not in pattern and "\n" not in pattern and not pattern.endswith("\\"):
        return f"r'{pattern}'"
    return repr(pattern)


def shows_value(text):
    """Whether a `repr` can be asserted: no address in it, not too long to read."""
    return " at 0x" not in text and len(text) <= 400


def observe(observers, scope, timeout):
    """Each inspector's value after the call, as [expr, repr, literal, float], those that
    return an assertable value; untraced (their lines are not the call's)."""
    out = []
    for expr in observers:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                value = eval(expr, scope)
            text = repr(value)
        except BaseException:
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if ALARM["fired"] or not shows_value(text):
            ALARM["fired"] = False
            continue
        out.append([expr, text, literal(value, text), has_float(value)])
    return out


def same_value(expected, entry, got):
    """Whether the assertion render.rs writes for `expected` holds for `got`: `is None`,
    `pytest.approx` for a float, `==` for another literal, else the `repr`."""
    try:
        if not entry.get("literal"):
            return repr(got) == entry["repr"]
        if expected is None:
            return got is None
        if isinstance(expected, float):
            return close(got, expected)
        return bool(got == expected)
    except BaseException:
        return False


def close(got, expected):
    """`got == pytest.approx(expected)` for numbers."""
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return False
    return abs(got - expected) <= max(1e-6 * abs(expected), 1e-12)


def survives(entry, original, outcome, scope):
    """Whether the test written for `entry` would still pass on a mutant that gave `outcome`."""
    kind, got = outcome
    if kind in ("timeout", "exit"):
        return True  # not counted: the probe's limit is not the suite's
    if kind == "setup":
        return False
    _, _, expected_kind, expected = original
    if expected_kind == "raises":
        if kind != "raises" or not any(c.__name__ == expected.__name__ for c in type(got).__mro__):
            return False
        if "match" not in entry:
            return True
        try:
            return re.search(ast.literal_eval(entry["match"]), str(got)) is not None
        except BaseException:
            return False
    if kind != "value":
        return False
    if expected_kind == "self":
        if got is not scope.get("obj"):
            return False
    elif expected_kind == "object":
        if not fields_hold(got, entry["fields"]):
            return False
    elif not same_value(expected, entry, got):
        return False
    if not fields_hold(scope.get("obj"), entry.get("state", [])):
        return False
    observed = entry.get("observed") or []
    if not observed:
        return True
    now = observe([o[0] for o in observed], scope, 0.25)
    if len(now) != len(observed):
        return False
    for (_, text, _, is_float), (_, got_text, _, _) in zip(observed, now):
        if got_text != text and not (is_float and close_text(got_text, text)):
            return False
    return True


def close_text(got, expected):
    try:
        return close(float(got), float(expected))
    except ValueError:
        return False


def fields_hold(obj, fields):
    """Whether `assert obj.name == expected` holds for each (name, repr, is_float)."""
    for name, text, is_float in fields:
        try:
            want, have = ast.literal_eval(text), vars(obj)[name]
            if not (close(have, want) if is_float and isinstance(want, float) else have == want):
                return False
        except BaseException:
            return False
    return True


class Mutants:
    """Mutants of the module under test, built on first use, one site each."""

    def __init__(self, path, module, module_file, alias):
        spec = importlib.util.spec_from_file_location("qefleet_mutants_lib", path)
        self.lib = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.lib)
        self.module = module
        self.module_file = module_file
        self.alias = alias
        self.source = open(module_file).read()
        mutator = self.lib.Mutator(None)
        mutator.visit(ast.parse(self.source))
        self.by_line = {}
        for index, site in enumerate(mutator.sites):
            self.by_line.setdefault(site["line"], []).append(index)
        self.built = {}

    def sites_on(self, lines):
        return [i for line in lines for i in self.by_line.get(line, ())]

    def get(self, index):
        if index not in self.built:
            self.built[index] = self.build(index)
        return self.built[index]

    def build(self, index):
        tree = ast.fix_missing_locations(self.lib.Mutator(index).visit(ast.parse(self.source)))
        mutant = types.ModuleType(self.module.__name__)
        mutant.__file__ = self.module_file
        mutant.__package__ = self.module.__package__
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                exec(compile(tree, self.module_file, "exec"), mutant.__dict__)
        except BaseException:
            return None  # a mutant that does not import fails every test: nothing to choose
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return mutant


def kill_mutants(spec, probed, module, alias, namespace, module_file):
    """For each assertable call in order, the mutants on its lines (those it executed and
    those of the module-level tables its target reads, "tables" by target) its test would kill that
    no earlier call (nor a kept test, `killed`) kills."""
    stop_at = time.monotonic() + spec.get("budget", 10.0)
    try:
        mutants = Mutants(spec["file"], module, module_file, alias)
    except BaseException as exc:
        print(f"mutants unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    killed = set(spec.get("killed", []))
    for entry, original, tables in probed:
        kills = []
        for index in mutants.sites_on(sorted(set(entry["lines"]) | set(tables))):
            if index in killed:
                continue
            if time.monotonic() > stop_at:
                return
            mutant = mutants.get(index)
            if mutant is None:
                continue
            setup, code, _, _ = original
            scope = dict(namespace)
            scope[alias] = mutant
            outcome, _, after, _ = run_once(setup, code, scope, module_file, 0.25, trace=False)
            if not survives(entry, original, outcome, after):
                kills.append(index)
                killed.add(index)
        if kills:
            sys.stdout.write(json.dumps({"kills_of": entry["id"], "sites": kills}) + "\n")
            sys.stdout.flush()


REGEX_MARKS = frozenset("$^()[]\\*+?")


def patterns_of(module):
    """The regular expressions the module keeps at its top level (also inside lists,
    tuples and dicts there): compiled ones, and strings in those containers that compile
    and use regex syntax (rule tables such as `[(r'(?i)(quiz)$', r'\\1zes'), ...]`), in a
    fixed order."""
    found = []

    def add(value, depth):
        if depth > 0 and isinstance(value, str) and REGEX_MARKS.intersection(value):
            try:
                value = re.compile(value)
            except (re.error, RecursionError, OverflowError):
                return
        if isinstance(value, re.Pattern):
            if value not in found and isinstance(value.pattern, str):
                found.append(value)
        elif depth < 2 and isinstance(value, (list, tuple)):
            for v in value[:50]:
                add(v, depth + 1)
        elif depth < 2 and isinstance(value, dict):
            for v in list(value.values())[:50]:
                add(v, depth + 1)

    for name, value in sorted(vars(module).items()):
        if not name.startswith("__"):
            add(value, 0)
    return found


def sample_regex(pattern, rng):
    """A string `pattern` matches, built by walking its parsed form, or None."""
    import re._parser as parser
    import re._constants as c

    groups = {}

    def one_of(items):
        chars = []
        negate = False
        for op, av in items:
            if op is c.NEGATE:
                negate = True
            elif op is c.LITERAL:
                chars.append(chr(av))
            elif op is c.RANGE:
                chars.append(chr(rng.randint(av[0], min(av[1], av[0] + 25))))
            elif op is c.CATEGORY:
                chars.append(category(av))
        if negate:
            return next((ch for ch in "a0 _-x" if ch not in chars), "~")
        return rng.choice(chars) if chars else "a"

    def category(av):
        return {c.CATEGORY_DIGIT: rng.choice("0123456789"), c.CATEGORY_SPACE: " ",
                c.CATEGORY_WORD: rng.choice("abcxyz19_"), c.CATEGORY_NOT_DIGIT: "a",
                c.CATEGORY_NOT_SPACE: "a", c.CATEGORY_NOT_WORD: "-"}.get(av, "a")

    def walk(seq, depth):
        if depth > 20:
            raise ValueError("too deep")
        out = []
        for op, av in seq:
            if op is c.LITERAL:
                out.append(chr(av))
            elif op is c.NOT_LITERAL:
                out.append("a" if chr(av) != "a" else "b")
            elif op is c.ANY:
                out.append(rng.choice("ax1 "))
            elif op is c.IN:
                out.append(one_of(av))
            elif op is c.CATEGORY:
                out.append(category(av))
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
                low, high, sub = av
                high = low + 2 if high == c.MAXREPEAT else high
                out.extend(walk(sub, depth + 1) for _ in range(rng.randint(low, max(low, min(high, low + 2)))))
            elif op is c.SUBPATTERN:
                group, _, _, sub = av
                text = walk(sub, depth + 1)
                if group is not None:
                    groups[group] = text
                out.append(text)
            elif op is c.BRANCH:
                out.append(walk(rng.choice(av[1]), depth + 1))
            elif op is c.GROUPREF:
                out.append(groups.get(av, ""))
            elif op is c.GROUPREF_EXISTS:
                _, yes, no = av
                out.append(walk(yes if rng.random() < 0.5 or no is None else no, depth + 1))
            elif op is getattr(c, "ATOMIC_GROUP", None):
                out.append(walk(av, depth + 1))
            # AT (anchors), ASSERT and ASSERT_NOT add nothing.
        return "".join(out)

    try:
        text = walk(parser.parse(pattern.pattern, pattern.flags & ~re.UNICODE), 0)
    except Exception:
        return None
    return text if pattern.match(text) and 0 < len(text) <= 40 else None


def regex_samples(module, limit=48):
    """Strings the module's own regular expressions match (`'3 wks 2 days'` for a duration
    pattern), seeded: inputs its parsers accept, which no literal of its code spells."""
    rng = random.Random(0)
    out = []
    patterns = patterns_of(module)
    for attempt in range(4):
        for pattern in patterns:
            text = sample_regex(pattern, rng)
            if text is not None and repr(text) not in out:
                out.append(repr(text))
            if len(out) >= limit:
                return out
    return out


def main():
    request = json.load(open(sys.argv[1]))
    signal.signal(signal.SIGALRM, on_alarm)
    module_file = request["module_file"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(request["module"])
    except BaseException as exc:
        last = f"{type(exc).__name__}: {exc}"
        print(f"module {request['module']} does not import: {last}", file=sys.stderr)
        sys.exit(3)
    alias = request["alias"]
    if request.get("samples"):
        sys.stdout.write(json.dumps({"samples": regex_samples(module)}) + "\n")
    namespace = {alias: module, "asyncio": asyncio, "io": io, "datetime": datetime,
                 "pickle": pickle, "sys": sys}
    # A target whose calls keep running past the timeout (an endless iterator fed a
    # callable, a loop waiting for input) gets no more of them: they would eat the budget.
    # One JSON line per call, flushed: when a call hangs where no signal reaches it (a C
    # loop) and the sandbox ends the run, the calls before it still count. No call starts
    # after the probe's own budget.
    timeouts = {}
    stop_at = time.monotonic() + request.get("budget", float("inf"))
    probed = []
    tables = request.get("tables") or {}
    for call in request["calls"]:
        target = call.get("target")
        if timeouts.get(target, 0) >= 2 or time.monotonic() > stop_at:
            continue
        entry, original = describe(call, module, alias, namespace, module_file, request["timeout"])
        if entry["kind"] == "timeout":
            timeouts[target] = timeouts.get(target, 0) + 1
            continue
        sys.stdout.write(json.dumps(entry) + "\n")
        sys.stdout.flush()
        if original is not None:
            probed.append((entry, original, tables.get(str(call.get("target")), [])))
    if request.get("mutants") and time.monotonic() < stop_at:
        kill_mutants(request["mutants"], probed, module, alias, namespace, module_file)


main()
