"""The package's import graph: no circles, the layers in order, the library never imports configs/.

Every `import` statement counts, also the ones inside functions: a lazy import that closes a
circle is still a circle (it only moves the failure from import time to call time).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("lstmrec_jax", "kernels")

# What each layer may import from the project (itself always). Anything under lstmrec_jax not
# listed may import any project module except `configs`.
ALLOWED = {
    "lstmrec_jax.core": ("lstmrec_jax.core",),
    "lstmrec_jax.data": ("lstmrec_jax.data",),
    "kernels": ("kernels", "lstmrec_jax.core"),
    "lstmrec_jax.model": ("lstmrec_jax.model", "lstmrec_jax.core", "kernels",
                          "lstmrec_jax.config_keys"),
    "lstmrec_jax.losses": ("lstmrec_jax.losses", "lstmrec_jax.config_keys"),
    "lstmrec_jax.config_keys": ("lstmrec_jax.config_keys",),
    "lstmrec_jax.mesh": ("lstmrec_jax.mesh",),
    "lstmrec_jax.evaluation.metrics": ("lstmrec_jax.evaluation.metrics",),
    "lstmrec_jax.auto": ("lstmrec_jax.auto",),
}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      parts = list(path.relative_to(ROOT).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """Project modules that `name` imports, anywhere in the file."""
  is_package = path.name == "__init__.py"
  tree = ast.parse(path.read_text())
  # `if TYPE_CHECKING:` imports never run: they cannot close a circle.
  typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                 for n in ast.walk(block)}
  out = set()
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
      top = target.split(".")[0]
      if top in (*PACKAGES, "configs"):
        # `import a.b.c` runs a.b.c; a name that is not a module resolves to its package.
        while target not in modules and "." in target and top != "configs":
          target = target.rsplit(".", 1)[0]
        out.add(target)
  out.discard(name)
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
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
  # A walker that found nothing would pass every check below: make sure it sees known edges.
  assert "lstmrec_jax.run" in graph["lstmrec_jax.train.loop"]
  assert "lstmrec_jax.core.lstm" in graph["kernels.dispatch"]
  assert len(graph) > 40


def test_no_import_circles():
  assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_never_imports_configs():
  offenders = {m: sorted(d) for m, d in _graph().items()
               if any(x == "configs" or x.startswith("configs.") for x in d)}
  assert offenders == {}


def test_layers():
  problems = []
  for module, deps in _graph().items():
    for layer, allowed in ALLOWED.items():
      if module == layer or module.startswith(layer + "."):
        bad = [d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed)]
        if bad:
          problems.append(f"{module} imports {sorted(bad)}")
  assert problems == []
