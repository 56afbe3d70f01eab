"""Checks of the package's shape that neither ruff nor import-linter make (run by scripts/check):

- no private name crosses a module: `from gateway.x import _name` and `module._name` on an
  imported gateway module are refused (a name another module needs is public, or the two
  belong together);
- no class grows past MAX_CLASS_LINES lines (split it along its seams instead).

Prints one line per problem and exits 1 when there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_CLASS_LINES = 250


def problems(root: Path) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        gateway_modules: set[str] = set()  # local names bound to gateway modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path}:{node.lineno}: imports private {alias.name} "
                                     f"from {node.module}")
                    gateway_modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("gateway") and alias.asname:
                        gateway_modules.add(alias.asname)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in gateway_modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{path}:{node.lineno}: uses private {node.value.id}.{node.attr}")
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    found.append(f"{path}:{node.lineno}: class {node.name} is {length} lines "
                                 f"(at most {MAX_CLASS_LINES}): split it along its seams")
    return found


def main() -> int:
    found = problems(Path(sys.argv[1] if len(sys.argv) > 1 else "gateway"))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
