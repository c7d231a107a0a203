"""Print the doctest examples of a module as JSON, for qefleet's doctest engine.

Usage: python extract_doctests.py MODULE_NAME
Exit 0 with a JSON list on stdout; exit 3 with the reason on stderr when the module
cannot be imported (that is the job's failure, not the fleet's).
"""
import ast
import doctest
import importlib
import json
import sys
import traceback


def expression(source):
    """True when the example is an expression whose value doctest would show.
    A bare print(...) call is an expression too, but what it shows is its output."""
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    body = tree.body
    is_print = isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id == "print"
    return not is_print


def literal(want):
    text = want.strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return repr(value) == text


def main():
    name = sys.argv[1]
    try:
        module = importlib.import_module(name)
    except BaseException as exc:  # the module under test may raise anything at import
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        print(f"module {name} does not import: {last}", file=sys.stderr)
        sys.exit(3)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for test in sorted(finder.find(module, name), key=lambda t: t.lineno or 0):
        examples = []
        for ex in test.examples:
            options = {doctest.OPTIONFLAGS_BY_NAME.get(k, k): v for k, v in ex.options.items()}
            if options.get(doctest.SKIP):
                continue
            exc = None
            if ex.exc_msg is not None:
                exc = ex.exc_msg.split(":", 1)[0].strip() or "Exception"
            fuzzy = bool(options.get(doctest.ELLIPSIS) or options.get(doctest.NORMALIZE_WHITESPACE))
            examples.append({
                "source": ex.source.rstrip("\n"),
                "want": ex.want,
                "exception": exc,
                "expression": expression(ex.source),
                "literal": literal(ex.want) if ex.want else False,
                "fuzzy": fuzzy,
                "lineno": (test.lineno or 0) + ex.lineno + 1,
            })
        if examples:
            tests.append({"name": test.name, "examples": examples})
    json.dump(tests, sys.stdout)


main()
