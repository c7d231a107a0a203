"""Run candidate calls against the module under test and report what each did, for
qefleet's local generator. Usage: python qefleet_probe.py REQUEST.json

REQUEST: {"module": "pkg.mod", "alias": "mod", "module_file": "/abs/path/mod.py",
          "calls": [{"id": 0, "setup": "obj = mod.C()", "expr": "obj.f(1)"}],
          "timeout": 1.0}
Prints a JSON list, one entry per call: kind is "value" (deterministic, assertable
result), "raises" (deterministic exception), or "skip" (nondeterministic, too slow,
unassertable, or the setup itself failed); "lines" are the module's lines the setup and
the call executed, "call_lines" those of the call alone; "state" lists the instance's
public attributes after the call, [name, repr, is_float], when they are deterministic
literals.
"""
import ast
import asyncio  # noqa: F401  (async targets are called through asyncio.run)
import contextlib
import datetime
import importlib
import io
import json
import math
import random
import signal
import sys
import time


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


def run_once(setup, code, namespace, module_file, timeout):
    # Lines of the call under test, apart from those its setup ran: a case is kept for
    # what its own call reaches.
    lines = set()
    setup_lines = set()
    current = [setup_lines]
    namespace = dict(namespace)

    def tracer(frame, event, arg):
        if frame.f_code.co_filename == module_file:
            if event == "line":
                current[0].add(frame.f_lineno)
            return tracer
        return None

    outcome = None
    # Modules drawing random numbers give reproducible values from one seed; the
    # generated tests seed the same way (an autouse fixture).
    random.seed(0)
    ALARM["fired"] = False
    signal.setitimer(signal.ITIMER_REAL, timeout)
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
                outcome = ("value", eval(code, namespace))
    except ProbeTimeout:
        outcome = ("timeout", None)
    except (KeyboardInterrupt, SystemExit) as exc:
        outcome = ("exit", exc)
    except BaseException as exc:  # the module under test may raise anything
        outcome = ("raises", exc)
    finally:
        sys.settrace(None)
        signal.setitimer(signal.ITIMER_REAL, 0)
    if ALARM["fired"]:
        outcome = ("timeout", None)
    return outcome, (sorted(lines), sorted(lines | setup_lines)), state_of(namespace.get("obj"))


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
        return entry
    first, lines, state = run_once(setup, code, namespace, module_file, timeout)
    if first[0] == "timeout":
        entry["kind"] = "timeout"
        return entry
    second, _, state_again = run_once(setup, code, namespace, module_file, timeout)
    entry["call_lines"], entry["lines"] = lines
    entry["state"] = state if state == state_again else []
    kind, value = first
    if kind in ("timeout", "exit", "setup") or second[0] != kind:
        return entry
    if kind == "raises":
        name = exception_name(value, module, alias)
        if name is None or type(second[1]) is not type(value):
            return entry
        entry.update(kind="raises", exception=name)
        return entry
    try:
        text, again = repr(value), repr(second[1])
    except BaseException:
        return entry
    if text != again or " at 0x" in text or len(text) > 400:
        return entry
    entry.update(kind="value", repr=text, literal=literal(value, text), float=has_float(value))
    return entry


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
    namespace = {alias: module, "asyncio": asyncio, "io": io, "datetime": datetime}
    # A target whose calls keep running past the timeout (an endless iterator fed a
    # callable, a loop waiting for input) gets no more of them: they would eat the budget.
    # One JSON line per call, flushed: when a call hangs where no signal reaches it (a C
    # loop) and the sandbox ends the run, the calls before it still count. No call starts
    # after the probe's own budget.
    timeouts = {}
    stop_at = time.monotonic() + request.get("budget", float("inf"))
    for call in request["calls"]:
        target = call.get("target")
        if timeouts.get(target, 0) >= 2 or time.monotonic() > stop_at:
            continue
        entry = describe(call, module, alias, namespace, module_file, request["timeout"])
        if entry["kind"] == "timeout":
            timeouts[target] = timeouts.get(target, 0) + 1
            continue
        sys.stdout.write(json.dumps(entry) + "\n")
        sys.stdout.flush()


main()
