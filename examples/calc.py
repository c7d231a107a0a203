"""A small calculator module: the bundled example the README's main command sends
through the fleet. Its docstring examples are what the doctest engine turns into tests."""


def add(a, b):
    """Add two numbers.

    >>> add(2, 3)
    5
    >>> add(-1, 1)
    0
    """
    return a + b


def divide(a, b):
    """Divide a by b, refusing zero.

    >>> divide(6, 3)
    2.0
    >>> divide(1, 0)
    Traceback (most recent call last):
        ...
    ZeroDivisionError: cannot divide by zero
    """
    if b == 0:
        raise ZeroDivisionError("cannot divide by zero")
    return a / b


def clamp(value, low, high):
    """Keep value within [low, high].

    >>> clamp(5, 0, 10)
    5
    >>> clamp(-3, 0, 10)
    0
    >>> [clamp(v, 0, 2) for v in (1, 3)]
    [1, 2]
    """
    if low > high:
        raise ValueError("low must not exceed high")
    if value < low:
        return low
    if value > high:
        return high
    return value


def describe(numbers):
    """Summarise a list of numbers.

    >>> print(describe([1, 2, 3]))
    n=3 min=1 max=3 mean=2.0
    """
    if not numbers:
        return "empty"
    mean = sum(numbers) / len(numbers)
    return f"n={len(numbers)} min={min(numbers)} max={max(numbers)} mean={mean}"
