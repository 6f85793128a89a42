"""The package's import graph: one floor per package, every import pointing down, no circles.

Every `import` statement counts, also the ones inside functions: a lazy import of a project
module that points up is still an upward arrow (it only moves the failure from import time to
call time). Lazy project imports are allowed only where `LAZY` names the module and the reason.

Run as a script to print the package-level graph and its cycles:

  python tests/test_imports.py
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIB = "lstmrec_jax"
# The repository's top-level kernels/ and configs/ are the packages lstmrec_jax.kernels and
# lstmrec_jax.configs (lstmrec_jax/kernels and lstmrec_jax/configs link to them).
FOLDERS = {"lstmrec_jax": ROOT / "lstmrec_jax", "lstmrec_jax.kernels": ROOT / "kernels",
           "lstmrec_jax.configs": ROOT / "configs"}

# The whole stack, from the floor up. A unit (a package or a module of lstmrec_jax) imports only
# units on lower floors; units on one floor never import each other. docs/architecture.md draws it.
FLOORS = (
    ("errors",),  # the one error family
    ("config_keys", "paths", "mesh", "auto", "plugins", "hostmem"),  # foundations
    ("core",),  # the functional recurrences
    ("kernels",),  # Pallas kernels of core's recurrence
    ("data", "model", "optim", "losses"),  # the pieces a run is made of
    ("checkpoint", "scoring"),  # Orbax I/O of a train state; ranks, top-k, streaming state
    ("evaluation",),  # metrics and reports over a dataset's splits
    ("run",),  # config -> RunSpec -> Run: where the pieces meet
    ("workdir",),  # a workdir's run restored; its evaluations
    ("train",),  # the step and the loop
    ("serving", "tuning"),  # the Recommender, bundles, the server; the search
    ("cli",),  # the entry points
)
# The recipes: never imported by the library (the entry points load them as files).
CONFIGS = "configs"

# Function-level imports of project modules, and why each one is lazy.
LAZY = {
    "lstmrec_jax.cli": "the entry points import the library inside main(): --help and a bad flag "
                       "answer at once, without loading jax, flax and orbax",
    "lstmrec_jax.data.pipeline": "tf_setup imports TensorFlow, an optional dependency (the numpy "
                                 "backend runs without it)",
}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package, folder in FOLDERS.items():
    for path in folder.rglob("*.py"):
      parts = list(path.relative_to(folder).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join([package, *parts])] = path
  return out


def _function_level(tree: ast.AST) -> set[int]:
  """ids of the import nodes inside a function body."""
  out = set()
  for fn in ast.walk(tree):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
      out |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
  return out


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]
             ) -> dict[str, bool]:
  """Project modules that `name` imports, anywhere in the file -> whether the import is lazy."""
  is_package = path.name == "__init__.py"
  tree = ast.parse(path.read_text())
  # `if TYPE_CHECKING:` imports never run: they cannot close a circle.
  typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                 for n in ast.walk(block)}
  lazy = _function_level(tree)
  out: dict[str, bool] = {}
  for node in ast.walk(tree):
    if id(node) in typing_only:
      continue
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      targets = []
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in modules else base)
    else:
      continue
    for target in targets:
      if target.split(".")[0] not in (LIB, "kernels", CONFIGS):
        continue
      # `import a.b.c` runs a.b.c; a name that is not a module resolves to its package.
      while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
      if target != name:
        out[target] = out.get(target, True) and id(node) in lazy
  return out


def _graph() -> dict[str, dict[str, bool]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def unit_of(module: str) -> str | None:
  """The stack unit of a module: 'lstmrec_jax.train.loop' -> 'train'; None outside the library.

  The package root `lstmrec_jax` (an empty __init__) and the recipes are no unit.
  """
  parts = module.split(".")
  if parts[0] != LIB or len(parts) < 2:
    return None
  return parts[1]


def floor_of(unit: str) -> int | None:
  return next((i for i, units in enumerate(FLOORS) if unit in units), None)


def package_graph(graph=None) -> dict[str, set[str]]:
  """Unit -> the other units it imports (the recipes included, as 'configs')."""
  graph = _graph() if graph is None else graph
  out: dict[str, set[str]] = {}
  for module, deps in graph.items():
    unit = unit_of(module)
    if unit is None:
      continue
    out.setdefault(unit, set())
    out[unit] |= {u for d in deps for u in [unit_of(d)] if u is not None and u != unit}
  return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in graph:
        continue
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
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_graph_is_read():
  graph = _graph()
  # A walker that found nothing would pass every check below: make sure it sees known edges,
  # lazy and not.
  assert "lstmrec_jax.run" in graph["lstmrec_jax.train.loop"]
  assert "lstmrec_jax.core.lstm" in graph["lstmrec_jax.kernels.dispatch"]
  assert graph["lstmrec_jax.cli.train"].get("lstmrec_jax.train.loop") is True  # lazy
  assert graph["lstmrec_jax.train.loop"]["lstmrec_jax.run"] is False
  assert len(graph) > 60


def test_every_unit_has_a_floor():
  units = set(package_graph()) - {CONFIGS}
  assert sorted(u for u in units if floor_of(u) is None) == []
  named = [u for floor in FLOORS for u in floor]
  assert len(named) == len(set(named))


def test_no_module_cycles():
  graph = {m: set(d) for m, d in _graph().items()}
  assert _cycles(graph) == []


def test_no_package_cycles():
  assert _cycles(package_graph()) == []


def test_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_never_imports_configs():
  offenders = {m: sorted(d) for m, d in _graph().items()
               if unit_of(m) not in (None, CONFIGS)
               and any(unit_of(x) == CONFIGS or x.startswith(CONFIGS) for x in d)}
  assert offenders == {}


def test_every_import_points_down():
  problems = []
  for unit, deps in package_graph().items():
    if unit == CONFIGS:
      continue
    for dep in sorted(deps):
      if dep == CONFIGS:
        continue  # test_library_never_imports_configs
      if floor_of(dep) is None or floor_of(dep) >= floor_of(unit):
        problems.append(f"{unit} (floor {floor_of(unit)}) imports {dep} (floor {floor_of(dep)})")
  assert problems == []


def test_lazy_imports_only_where_justified():
  offenders = sorted(f"{m} -> {d}" for m, deps in _graph().items() for d, lazy in deps.items()
                     if lazy and not any(m == k or m.startswith(k + ".") for k in LAZY))
  assert offenders == []


def test_the_stack_check_catches_an_upward_import(monkeypatch):
  """A checker that cannot fail proves nothing: an injected upward edge must be reported."""
  real = package_graph()
  monkeypatch.setattr(sys.modules[__name__], "package_graph",
                      lambda graph=None: {**real, "model": real["model"] | {"train"}})
  try:
    test_every_import_points_down()
  except AssertionError as e:
    assert "model (floor 4) imports train (floor 9)" in str(e)
  else:
    raise AssertionError("an upward import was not caught")


def main() -> None:
  """Prints the package-level graph by floor and its cycles (goal: none)."""
  graph = package_graph()
  for i, units in reversed(list(enumerate(FLOORS))):
    for unit in units:
      deps = sorted(graph.get(unit, ()), key=lambda u: (floor_of(u) or 0, u))
      print(f"floor {i:2d}  {unit:<12} -> {', '.join(deps) or '-'}")
  cycles = _cycles(graph)
  print(f"package-level cycles: {len(cycles)}" + "".join(f"\n  {c}" for c in cycles))
  lazy = sorted(f"{m} -> {d}" for m, deps in _graph().items() for d, l in deps.items() if l)
  print(f"function-level project imports: {len(lazy)} (allowed in: {', '.join(LAZY)})")


if __name__ == "__main__":
  main()
