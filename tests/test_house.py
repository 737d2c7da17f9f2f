"""The package's structure: imports run down the floors, each name table lives once, and the
product cites only what it ships."""

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "hpjax"


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def _imported(module: str, path: pathlib.Path, node, modules) -> list[str]:
  """The package modules an import statement names, wherever it stands (a function-level
  import counts like any other)."""
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    base = node.module or ""
    if node.level:
      package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
      package = package[:len(package) - node.level + 1]
      base = ".".join(package + ([base] if base else []))
    names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
             for alias in node.names]
  out = []
  for name in names:
    while name not in modules and "." in name:
      name = name.rsplit(".", 1)[0]
    if name in modules and name != module:
      out.append(name)
  return out


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        graph[module].update(_imported(module, path, node, modules))
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_cycle_finder_sees_a_function_level_cycle(tmp_path, monkeypatch):
  (tmp_path / "hpjax").mkdir()
  (tmp_path / "hpjax" / "__init__.py").write_text("")
  (tmp_path / "hpjax" / "a.py").write_text("from hpjax import b\n")
  (tmp_path / "hpjax" / "b.py").write_text("def f():\n  from hpjax.a import x\n")
  (tmp_path / "hpjax" / "c.py").write_text("from . import a\n")
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "hpjax")
  assert cycles(import_graph()) == [["hpjax.a", "hpjax.b"]]


def test_no_import_cycles():
  assert cycles(import_graph()) == []


def _files_containing(text: str) -> list[str]:
  return sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                if text in p.read_text())


@pytest.mark.parametrize("file_name", ["vl_checklist_attributes", "vl_checklist_relations"])
def test_replace_file_names_live_in_one_table(file_name):
  assert set(_files_containing(file_name)) <= {"hpjax/data/suites.py", "hpjax/data/synthetic.py"}
  assert "hpjax/data/suites.py" in _files_containing(file_name)


def test_the_package_cites_only_what_it_ships():
  assert _files_containing("shared/docs") == []
  assert _files_containing("../shared") == []
