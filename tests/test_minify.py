"""golf.minify: what train_gpt.py packs is the same program as the checkout, in fewer bytes.

C, C++ and CUDA are held to GCC's own comment removal (`-fpreprocessed -E`), token by token and line by line;
Python to its syntax tree without docstrings. The whole packed tree building and training from its folder alone
is test_submit.py's test_train_gpt_runs_from_its_folder_alone."""

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from golf import bundle, minify

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = bundle.shipped_files(ROOT)

TRICKY_C = r'''#include <cstdio>  // a comment after a directive
#define SLASHES "//not a comment" /* a comment
   spanning lines */ + 1
#define LONG(a, b) \
    ((a) + \
     (b))
static const char q = '"', a = '\'', s = '/';   /* "quotes" in a comment */
static const char* t = "a \"/* not a comment */\" b";  // 'it''s'
int f(int x) { return x/*inline*/+1; }
/**/int g(){return 2;}
'''


def gcc_lines(text: str, tmp_path: Path) -> list[list[str]]:
    """GCC's reading of the file with comments removed and nothing expanded: the tokens of each non-blank line."""
    src = tmp_path / "x.cpp"
    src.write_text(text)
    out = subprocess.run(["g++", "-x", "c++", "-fpreprocessed", "-dD", "-E", "-P", str(src)], check=True,
                         capture_output=True, text=True).stdout
    return [line.split() for line in out.split("\n") if line.strip()]


needs_gcc = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ as the oracle")


@needs_gcc
def test_c_family_on_tricky_input_matches_gcc(tmp_path):
    small = minify.c_family(TRICKY_C)
    assert "comment" not in small.replace("not a comment", "") and "\n\n" not in small
    assert '"//not a comment"' in small and "\"a \\\"/* not a comment */\\\" b\"" in small
    assert gcc_lines(small, tmp_path) == gcc_lines(TRICKY_C, tmp_path)
    # a comment is one space, and its newlines go with it: what follows it is still the directive's (C's phase 3)
    assert re.search(r'#define SLASHES "//not a comment" +\+ 1\n', small) and "x +1" in small


@needs_gcc
@pytest.mark.parametrize("name", [n for n, _ in SHIPPED if n.endswith(minify._C_SUFFIXES)])
def test_every_shipped_c_file_keeps_its_tokens_and_lines(name, tmp_path):
    text = (ROOT / name).read_text()
    small = minify.c_family(text)
    assert len(small) < len(text)
    assert gcc_lines(small, tmp_path) == gcc_lines(text, tmp_path)


def test_c_family_refuses_what_it_cannot_scan():
    with pytest.raises(ValueError, match=r"unterminated /\*"):
        minify.c_family("int x; /* open")
    with pytest.raises(ValueError, match="unterminated \" literal"):
        minify.c_family('const char* s = "open\n;')


def without_docstrings(tree: ast.Module, keep_module: bool) -> str:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and not (node is tree and keep_module)):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


@pytest.mark.parametrize("name", [n for n, _ in SHIPPED if n.endswith(".py")])
def test_every_shipped_python_file_is_the_same_program(name):
    text = (ROOT / name).read_text()
    small = minify.python(text)
    keep = "__doc__" in text
    assert ast.dump(ast.parse(small)) == without_docstrings(ast.parse(text), keep)
    assert not any(line.lstrip().startswith("#") for line in small.split("\n"))  # no comment lines
    compile(small, name, "exec")


def test_a_module_that_reads_its_docstring_keeps_it():
    text = (ROOT / "python/golf/eval.py").read_text()
    doc = ast.get_docstring(ast.parse(text), clean=False)
    assert "__doc__" in text and doc and ast.get_docstring(ast.parse(minify.python(text)), clean=False) == doc
    train = minify.python((ROOT / "python/golf/train.py").read_text())
    assert ast.get_docstring(ast.parse(train)) is None


def test_cmake_and_toml_lose_only_comments_and_blank_lines():
    cm = "# top\ncmake_minimum_required(VERSION 3.25)\n\n  # indented\n  set(X \"a # b\")  \n#[[ bracket ]]\n"
    assert minify.cmake(cm) == 'cmake_minimum_required(VERSION 3.25)\nset(X "a # b")\n#[[ bracket ]]\n'
    toml = "# c\n[a]\n\nb = \"#x\"   # tail\n"
    assert minify.toml(toml) == '[a]\nb = "#x"   # tail\n'
    assert minify.shipped_text("notes.txt", "# kept\n") == "# kept\n"


def test_the_packed_tree_is_smaller_than_its_sources():
    raw = sum(len(p.read_bytes()) for _, p in SHIPPED)
    packed = sum(len(minify.shipped_text(n, p.read_text()).encode()) for n, p in SHIPPED)
    assert packed < 0.8 * raw
