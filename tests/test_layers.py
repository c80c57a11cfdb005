"""The import graph of tunelab, imports inside functions included (they hide cycles, they
do not remove them): no cycle, and nothing imports the command line."""

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in (SOURCE / "tunelab").rglob("*.py"):
        name = ".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:  # importing a.b.c also runs the packages a.b and a (but not the
                parts = target.split(".")  # importer's own packages: they are being imported already)
                graph[name] |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)
                                if ".".join(parts[:i]) in modules and ".".join(parts[:i]) != name
                                and not name.startswith(".".join(parts[:i]) + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_even_inside_functions():
    graph = import_graph()
    assert len(graph) > 30
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


# The packages, lowest first (the README's layout): a package imports only packages
# before it in this list, imports inside functions included.
LAYERS = ("core", "problems", "data", "models", "encoders", "training", "tasks", "audit", "analysis", "report",
          "study", "serve", "cli", "__main__")


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tunelab"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for name, targets in graph.items():
        source = package_of(name)
        if source == "tunelab":  # the package root: lazy names of every layer, for users
            continue
        for target in targets:
            if package_of(target) != source and rank[package_of(target)] > rank[source]:
                found.append(f"{name} -> {target}")
    return sorted(found)


def test_packages_are_layers():
    graph = import_graph()
    shipped_data = {"presets", "templates", "archs"}  # folders of files the package ships, no code
    assert {package_of(m) for m in graph} - {"tunelab"} - shipped_data == set(LAYERS)  # each has its place
    assert upward_imports(graph) == []


def test_the_layer_check_sees_an_upward_import():
    assert upward_imports({"tunelab.core.x": {"tunelab.tasks.y"}, "tunelab.tasks.y": set()}) == \
        ["tunelab.core.x -> tunelab.tasks.y"]


def test_the_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_nothing_imports_the_command_line():
    importers = [name for name, targets in import_graph().items() if "tunelab.cli" in targets
                 and name != "tunelab.__main__" and not name.startswith("tunelab.cli")]
    assert importers == []


def test_tasks_import_no_command_module():
    commands = {"tunelab.serve.predict", "tunelab.serve.export", "tunelab.study.run", "tunelab.report.document"}
    for name, targets in import_graph().items():
        if name.startswith("tunelab.tasks."):
            assert not targets & commands, (name, targets & commands)


def test_no_code_outside_problems_compares_a_problem_name():
    """What differs between problem kinds lives in tunelab/problems: elsewhere code asks the
    problem (get_problem(name).headline, .strata(...), ...) instead of comparing names."""
    from tunelab.problems import PROBLEMS

    names = set(PROBLEMS)
    found = []
    for path in (SOURCE / "tunelab").rglob("*.py"):
        if "problems" in path.relative_to(SOURCE / "tunelab").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
                constants += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                              for e in c.elts if isinstance(e, ast.Constant)]
                if any(c.value in names for c in constants):
                    found.append(f"{path.name}:{node.lineno}")
    assert found == [], found


PROBLEM_FLAGS = {"exclusive_classes", "has_classes", "tunes_threshold", "shots_allowed"}
SCORE_CLASSES = {"ClassScores", "LabelScores", "ValueScores", "OrdinalScores"}


def outside_problems():
    for path in (SOURCE / "tunelab").rglob("*.py"):
        if "problems" not in path.relative_to(SOURCE / "tunelab").parts:
            yield path, ast.parse(path.read_text())


def test_no_code_outside_problems_reads_a_problem_flag_or_tests_a_score_class():
    """What differs between problem kinds is asked of the problem (its methods) or done
    by the scores themselves, never decided elsewhere from its flags or score types."""
    found = []
    for path, tree in outside_problems():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in PROBLEM_FLAGS:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if names & SCORE_CLASSES:
                    found.append(f"{path.name}:{node.lineno} isinstance")
    assert found == [], found


def test_internal_imports_inside_functions_are_few_and_say_why():
    """tunelab's own modules are imported at the top; the few imports left inside
    functions load torch or transformers at import, and say so."""
    inside = []
    for path in (SOURCE / "tunelab").rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("tunelab") or \
                            isinstance(sub, ast.Import) and any(a.name.startswith("tunelab") for a in sub.names):
                        inside.append((path.name, sub.lineno, lines[sub.lineno - 1]))
    assert len(inside) < 40, len(inside)
    assert [f"{name}:{line}" for name, line, text in inside if "# here, not at the top: loads" not in text] == []


def test_modules_are_of_a_readable_size():
    sizes = {path.name: len(path.read_text().splitlines()) for path in (SOURCE / "tunelab").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
