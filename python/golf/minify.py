"""What the submission ships of each source file: the same program without its comments, docstrings and layout.

    shipped_text(name, text) -> str   `text` of file `name` minified by its kind (below); other files unchanged
    python(text) -> str               docstrings and comments dropped, re-printed from the syntax tree
    c_family(text) -> str             C, C++ and CUDA: comments dropped, lines stripped, blank lines dropped
    cmake(text) -> str                comment lines and blank lines dropped, lines stripped
    toml(text) -> str                 comment lines and blank lines dropped

The code bytes count against the cap, and what they say to a reader does not run: golf.bundle packs these forms.
Each keeps the program's tokens and, where a language gives lines meaning (preprocessor directives), its lines.
A Python module that reads its own `__doc__` (a command's --help) keeps that docstring. The readable sources are
the checkout the submission was made from (its commit: `git_sha` in the runs' summary.json).
"""

from __future__ import annotations

import ast
import re

_C_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".cu", ".cuh")


def shipped_text(name: str, text: str) -> str:
    if name.endswith(".py"):
        return python(text)
    if name.endswith(_C_SUFFIXES):
        return c_family(text)
    if name.endswith(("CMakeLists.txt", ".cmake")):
        return cmake(text)
    if name.endswith(".toml"):
        return toml(text)
    return text


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def python(text: str) -> str:
    tree = ast.parse(text)
    keep_module_doc = "__doc__" in text
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.body and _is_docstring(node.body[0]) and not (isinstance(node, ast.Module) and keep_module_doc):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def c_family(text: str) -> str:
    """A scan that knows string and character literals, so that "//" or "/*" inside them stay; a comment becomes
    one space, as the compiler reads it."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("an unterminated /* comment")
            out.append(" ")  # as C's translation phase 3 does: even in a directive, the comment's newlines go
            i = end + 2
        elif text[i] in "\"'":
            quote, j = text[i], i + 1
            while j < n and text[j] != quote and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            if j >= n or text[j] != quote:
                raise ValueError(f"an unterminated {quote} literal at offset {i}")
            out.append(text[i:j + 1])
            i = j + 1
        else:
            j = min([k for k in (text.find("//", i), text.find("/*", i), text.find('"', i), text.find("'", i))
                     if k >= 0], default=n)
            out.append(text[i:j])
            i = j
    return _lines("".join(out))


def _lines(text: str) -> str:
    lines = [line.strip() for line in text.split("\n")]
    return "".join(line + "\n" for line in lines if line)


_CMAKE_COMMENT = re.compile(r"^\s*#(?!\[=*\[)")  # a whole-line comment, not a bracket comment's start


def cmake(text: str) -> str:
    return _lines("\n".join(line for line in text.split("\n") if not _CMAKE_COMMENT.match(line)))


def toml(text: str) -> str:
    return "".join(line + "\n" for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#"))
