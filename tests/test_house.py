"""The house: no import circle among the project's modules (a lazy import that only hides one counts), the training
loop short enough to read top to bottom, and no path of one machine in the code, studies or workflow."""

import ast
import re
import subprocess

from conftest import REPO


def project_imports(path) -> set[str]:
    """The project modules (utils.x, models.x) ``path`` imports anywhere, but under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_no_module_imports_one_that_imports_it_back():
    modules = {}
    for path in [*REPO.glob("utils/*.py"), *REPO.glob("models/*.py")]:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {name: (project_imports(path) & set(modules)) - {name} for name, path in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    circles = sorted((a, b) for a, targets in graph.items() for b in targets if reaches(b, a))
    assert not circles, f"import circles through: {circles}"


def test_the_training_loop_reads_top_to_bottom():
    path = REPO / "utils" / "training.py"
    text = path.read_text()
    assert len(text.splitlines()) <= 300
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 50]  # fmt: skip
    assert not long


def test_no_path_of_one_machine_in_code_studies_or_workflow():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    kept = [
        name for name in tracked if re.match(r"(utils|models|bench|studies|workflow|config|slurm)/|[^/]+\.py$", name)
    ]
    machine = re.compile(r"(?<![\w$.{])/(work|root|home|tmp|scratch)/")
    found = [name for name in kept if name.endswith((".py", ".yaml", ".smk", ".sh", ".md", "Snakefile"))
             and machine.search((REPO / name).read_text())]  # fmt: skip
    assert not found
