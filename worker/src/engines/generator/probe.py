"""Run candidate calls against the module under test and report what each did, for
qefleet's local generator. Usage: python qefleet_probe.py REQUEST.json

REQUEST: {"module": "pkg.mod", "alias": "mod", "module_file": "/abs/path/mod.py",
          "calls": [{"id": 0, "expr": "mod.f(1)"}], "timeout": 1.0}
Prints a JSON list, one entry per call: kind is "value" (deterministic, assertable
result), "raises" (deterministic exception), or "skip" (nondeterministic, too slow,
unassertable); "lines" are the module's lines the call executed.
"""
import ast
import asyncio  # noqa: F401  (async targets are called through asyncio.run)
import contextlib
import importlib
import io
import json
import math
import signal
import sys


class ProbeTimeout(BaseException):
    pass


def on_alarm(signum, frame):
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


def run_once(code, namespace, module_file, timeout):
    lines = set()

    def tracer(frame, event, arg):
        if frame.f_code.co_filename == module_file:
            if event == "line":
                lines.add(frame.f_lineno)
            return tracer
        return None

    outcome = None
    signal.setitimer(signal.ITIMER_REAL, timeout)
    sys.settrace(tracer)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
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
    return outcome, sorted(lines)


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
    except SyntaxError:
        return entry
    first, lines = run_once(code, namespace, module_file, timeout)
    second, _ = run_once(code, namespace, module_file, timeout)
    entry["lines"] = lines
    kind, value = first
    if kind in ("timeout", "exit") or second[0] != kind:
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
    namespace = {alias: module, "asyncio": asyncio}
    results = [describe(c, module, alias, namespace, module_file, request["timeout"]) for c in request["calls"]]
    sys.stdout.write(json.dumps(results))


main()
