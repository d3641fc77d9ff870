"""The package's import layering: data flows one way, so no module imports a layer above
its own, and no modules import each other in a cycle."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "s2gr_jax"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = (
    ("infrastructure", ("fileio", "errors", "downloads", "parallel", "metrics",
                        "config_keys")),
    ("data", ("data",)),
    ("sid", ("sid",)),
    ("models", ("models",)),
    ("decoding", ("decoding",)),
    ("training", ("train", "evaluate", "checkpoints", "metric_writer", "baselines",
                  "rl", "lm")),
    ("recipe", ("stages", "config_lib", "run", "main", "export", "report", "bench",
                "tune")),
)


def layer_of(module: str) -> int:
  top = module.split(".")[0]
  for rank, (_, members) in enumerate(LAYERS):
    if top in members:
      return rank
  raise AssertionError(f"s2gr_jax.{module} is in no layer of tests/test_layers.py")


def imports() -> dict[str, set[str]]:
  """Module (without the ``s2gr_jax.`` prefix) → the project modules it imports,
  including imports inside functions."""
  graph = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    module = ".".join(p for p in parts if p != "__init__") or "__init__"
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and (
          node.module == "s2gr_jax" or node.module.startswith("s2gr_jax.")):
        base = node.module[len("s2gr_jax."):] if "." in node.module else ""
        for alias in node.names:
          candidate = f"{base}.{alias.name}" if base else alias.name
          is_module = (ROOT / (candidate.replace(".", "/") + ".py")).exists() or (
              ROOT / candidate.replace(".", "/") / "__init__.py").exists()
          deps.add(candidate if is_module else base)
      elif isinstance(node, ast.Import):
        deps |= {a.name[len("s2gr_jax."):] for a in node.names
                 if a.name.startswith("s2gr_jax.")}
    graph[module] = {d for d in deps if d and d != module}
  return graph


def test_no_module_imports_a_higher_layer():
  bad = []
  for module, deps in imports().items():
    if module == "__init__":
      continue
    for dep in deps:
      if layer_of(dep) > layer_of(module):
        bad.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} "
                   f"({LAYERS[layer_of(dep)][0]})")
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  graph = imports()
  # A package's __init__ re-exporting its own modules is not a cycle of ideas: drop the
  # edges from a package to its submodules.
  edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    for dep in sorted(edges.get(node, ())):
      if state.get(dep) == "open":
        cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep, stack + [dep])
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])
  assert not cycles, cycles


def test_the_layer_map_names_every_top_level_module():
  tops = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
          if (p.suffix == ".py" and p.stem != "__init__")
          or (p.is_dir() and (p / "__init__.py").exists())}
  named = {m for _, members in LAYERS for m in members}
  assert tops == named, (sorted(tops - named), sorted(named - tops))
