"""A calculator for model-written arithmetic that cannot be talked into running anything else.

    calculate("2**10 + sqrt(144)")   -> 1036.0
    calculate("(1).__class__")       -> CalcError: attribute access is not allowed ...
    calculate("9**9**9")             -> CalcError: the result would have about 369 million digits ...

MiniMind's agent trainer runs the model's expression through `eval` with restricted builtins,
under a SIGALRM timer. Restricted `eval` is a known escape hatch (attributes reach any object),
and SIGALRM exists only on POSIX, in the main thread. Here the expression is parsed with `ast`
and walked node by node; only these are evaluated:

    numbers (int, float)          1, 2.5, 1e3            (not True/False, strings or complex)
    + - * / // % ** and unary + -
    whitelisted functions         sqrt(2), math.sqrt(2), round(x, 2), max(1, 2), factorial(5) ...
    whitelisted constants         pi, e, tau, math.pi
Anything else (a name, an attribute, a call of anything not listed, a list, a comparison, a
lambda, a comprehension) is refused before any evaluation. `math.sqrt` is read as a qualified
name, not as an attribute of an object: only `math.` followed by a listed name is accepted.

Why there is no timer. Every step is bounded before it runs: the text is at most 512
characters, the tree at most 256 nodes and 100 levels deep, every integer at most 4096 bits,
and an operation whose result would be larger (a power, a product, a factorial, comb/perm) is
refused from an estimate of its size, before it is computed. So the worst case is a few hundred
operations on numbers of ~1200 digits, well under a millisecond, and whether an expression is
accepted depends on the expression only, never on the machine or its load: the same rollout
gets the same reward on a laptop and on a busy GPU node, on Linux, macOS and Windows, in any
thread. (A wall-clock timeout could not even fire during `9**9**9`: the big-integer power runs
in C without releasing the interpreter lock.)
"""

from __future__ import annotations

import ast
import math

MAX_CHARS = 512  # expression text
MAX_NODES = 256  # syntax-tree nodes: bounds the number of operations
MAX_DEPTH = 100  # nesting of the tree (a sum of n terms is n deep): bounds the evaluator's recursion
MAX_BITS = 4096  # any integer, operand or result (about 1233 decimal digits)
MAX_ROUND_DIGITS = 100  # round(x, n): Python computes 10**|n| for an int x

# Unicode and habits that models write for arithmetic, as MiniMind's tools accept them.
_REWRITE = {"^": "**", "×": "*", "÷": "/", "−": "-", "（": "(", "）": ")", "²": "**2", "³": "**3"}


class CalcError(ValueError):
    """The expression is refused or cannot be computed; the message says why, for the model."""


def _checked_real(value):
    """Every value computed passes here: a real number of bounded size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalcError(f"the result is not a real number ({type(value).__name__})")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise CalcError(f"a number exceeds {MAX_BITS} bits (about {int(MAX_BITS * math.log10(2))} digits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError("the result is not finite (overflow or infinity)")
    return value


def _log2_size(x) -> float:
    """log2 of |x|, for estimating how big a result would be (0 for |x| <= 1)."""
    x = abs(x)
    return math.log2(x) if x > 1 else 0.0  # math.log2 takes integers of any size


def _refuse_if_huge(bits: float, what: str) -> None:
    if bits > MAX_BITS:
        digits = bits * math.log10(2)
        size = f"about {digits / 1e6:,.0f} million digits" if digits >= 1e6 else f"about {digits:,.0f} digits"
        raise CalcError(f"{what}: the result would have {size}, more than the limit of {int(MAX_BITS * math.log10(2))}")


def _power(base, exponent):
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        _refuse_if_huge(_log2_size(base) * exponent, "power refused")
    result = base**exponent
    if isinstance(result, complex):
        raise CalcError("a negative number to a fractional power is not a real number")
    return result


def _multiply(a, b):
    if isinstance(a, int) and isinstance(b, int):
        _refuse_if_huge(_log2_size(a) + _log2_size(b), "product refused")
    return a * b


def _lgamma_bits(n: float) -> float:
    return math.lgamma(n + 1) / math.log(2)


def _int_arg(x, name: str) -> int:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if not isinstance(x, int) or isinstance(x, bool):
        raise CalcError(f"{name} needs whole numbers")
    return x


def _factorial(n):
    n = _int_arg(n, "factorial")
    if n < 0:
        raise CalcError("factorial of a negative number")
    _refuse_if_huge(_lgamma_bits(n), f"factorial({n}) refused")
    return math.factorial(n)


def _comb_perm(fn, name):
    def call(n, k):
        n, k = _int_arg(n, name), _int_arg(k, name)
        if not 0 <= k <= n:
            raise CalcError(f"{name}(n, k) needs 0 <= k <= n")
        bits = _lgamma_bits(n) - _lgamma_bits(n - k) - (_lgamma_bits(k) if name == "comb" else 0.0)
        _refuse_if_huge(bits, f"{name}({n}, {k}) refused")
        return fn(n, k)

    return call


def _round(x, digits=None):
    if digits is None:
        return round(x)
    digits = _int_arg(digits, "round")
    if abs(digits) > MAX_ROUND_DIGITS:
        raise CalcError(f"round: at most {MAX_ROUND_DIGITS} digits")
    return round(x, digits)


def _min_max(fn):
    def call(*args):
        if not args:
            raise CalcError(f"{fn.__name__} needs at least one number")
        return fn(args)

    return call


# Functions by name; each gets numbers only (checked before the call) and returns a number.
FUNCTIONS = {
    "abs": abs,
    "round": _round,
    "min": _min_max(min),
    "max": _min_max(max),
    "pow": _power,
    "sqrt": math.sqrt,
    "cbrt": lambda x: math.copysign(abs(x) ** (1 / 3), x),
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "log1p": math.log1p,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "fabs": math.fabs,
    "floor": math.floor,
    "ceil": math.ceil,
    "trunc": math.trunc,
    "isqrt": math.isqrt,
    "gcd": math.gcd,
    "lcm": math.lcm,
    "fmod": math.fmod,
    "factorial": _factorial,
    "comb": _comb_perm(math.comb, "comb"),
    "perm": _comb_perm(math.perm, "perm"),
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: _multiply,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _power,
}
_UNARY = {ast.UAdd: lambda a: +a, ast.USub: lambda a: -a}


def _qualified(node) -> str | None:
    """'sqrt' for `sqrt`, 'sqrt' for `math.sqrt`, None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math":
        return node.attr
    return None


def _describe(node) -> str:
    return {
        ast.Attribute: "attribute access",
        ast.Subscript: "indexing",
        ast.Compare: "comparison",
        ast.BoolOp: "and/or",
        ast.Lambda: "lambda",
        ast.IfExp: "if/else",
        ast.Starred: "*args",
        ast.Tuple: "a tuple (a comma outside a call)",
        ast.List: "a list",
        ast.Dict: "a dict",
        ast.ListComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
    }.get(type(node), type(node).__name__)


def _check_tree(tree: ast.Expression) -> None:
    """Refuse anything outside the whitelist, and trees too big or too deep, before evaluating."""
    stack, count = [(tree.body, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalcError(f"the expression is too long (more than {MAX_NODES} parts)")
        if depth > MAX_DEPTH:
            raise CalcError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise CalcError(f"only numbers are allowed, not {node.value!r}")
            _checked_real(node.value)
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Call):
            name = _qualified(node.func)
            if name not in FUNCTIONS:
                what = f"unknown function {name!r}" if name else "only named functions can be called"
                raise CalcError(f"{what}; allowed: {', '.join(sorted(FUNCTIONS))}")
            if node.keywords:
                raise CalcError("keyword arguments are not allowed")
            stack += [(arg, depth + 1) for arg in node.args]
        elif (name := _qualified(node)) is not None:
            if name not in CONSTANTS:
                raise CalcError(f"unknown name {name!r}; allowed constants: {', '.join(CONSTANTS)}")
        elif isinstance(node, (ast.BinOp, ast.UnaryOp)):
            raise CalcError(f"operator {type(node.op).__name__} is not allowed (only + - * / // % **)")
        else:
            what = "attribute access" if isinstance(node, ast.Attribute) else _describe(node)
            raise CalcError(
                f"{what} is not allowed in a calculation (only numbers, + - * / // % ** and math functions)"
            )


def _evaluate(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp):
        return _checked_real(_BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.UnaryOp):
        return _checked_real(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.Call):
        args = [_evaluate(a) for a in node.args]
        return _checked_real(FUNCTIONS[_qualified(node.func)](*args))
    return CONSTANTS[_qualified(node)]


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression, or CalcError saying why it is refused."""
    if not isinstance(expression, str):
        raise CalcError("the expression must be a string")
    if len(expression) > MAX_CHARS:  # checked first, so the parser never sees a huge text
        raise CalcError(f"the expression is too long ({len(expression)} characters, limit {MAX_CHARS})")
    for old, new in _REWRITE.items():
        expression = expression.replace(old, new)
    expression = expression.strip()
    if not expression:
        raise CalcError("the expression is empty")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        reason = e.msg if isinstance(e, SyntaxError) else "too complex to read"
        raise CalcError(f"not a valid expression: {reason}") from None
    _check_tree(tree)
    try:
        return _evaluate(tree.body)
    except CalcError:
        raise
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except (ArithmeticError, ValueError, TypeError) as e:  # math domain errors, overflow, bad arity
        raise CalcError(f"cannot compute: {e}") from None


def format_number(value: int | float) -> str:
    """As the calculator answers: integers exactly, floats with 12 significant digits
    (0.1 + 0.2 -> "0.3", sqrt(16) -> "4")."""
    if isinstance(value, int):
        return str(value)
    return format(value, ".12g")
