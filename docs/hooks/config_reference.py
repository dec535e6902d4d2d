"""MkDocs hook: the device configuration reference, generated from the dataclasses that define it.

A page holds a fenced block ``config-reference`` (its content is ignored); this hook replaces it with one table
per section of the device configuration: every key with its type, default, the rule ``check()`` enforces and the
field's docstring. It reads ``edge/device/config.py`` (the ``Config`` tree) and the modules its sections come from
(``MqttConfig`` in ``edge/protocol/client.py``) with :mod:`ast`, without importing them, so the site builds without
the device's dependencies and the reference is always the code's. Anything it cannot find fails the build.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

CONFIG_MODULE = "edge/device/config.py"
ROOT_CLASS = "Config"
BLOCK = re.compile(r"^```config-reference[^\n]*\n.*?^```[ \t]*$", re.M | re.S)


class Module:
    """One parsed source file: its classes, its module-level names and where its imports come from."""

    def __init__(self, root: Path, relative: str):
        self.root, self.relative = root, relative
        path = root / relative
        if not path.is_file():
            raise PluginError(f"config reference: {relative} not found")
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
        self.classes = {node.name: node for node in self.tree.body if isinstance(node, ast.ClassDef)}
        self.values: dict[str, ast.expr] = {}
        self.imports: dict[str, tuple[str, str]] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.values[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.values[node.target.id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)

    def docstring(self) -> str:
        return ast.get_docstring(self.tree) or ""


class Modules:
    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[str, Module] = {}

    def get(self, relative: str) -> Module:
        if relative not in self.cache:
            self.cache[relative] = Module(self.root, relative)
        return self.cache[relative]

    def of_import(self, module: str) -> Module | None:
        relative = module.replace(".", "/") + ".py"
        if (self.root / relative).is_file():
            return self.get(relative)
        return None

    def find_class(self, module: Module, name: str) -> tuple[Module, ast.ClassDef] | None:
        if name in module.classes:
            return module, module.classes[name]
        if name in module.imports:
            other = self.of_import(module.imports[name][0])
            if other is not None:
                return self.find_class(other, module.imports[name][1])
        return None

    def constant_names(self, module: Module, expr: ast.expr, depth: int = 0) -> list[str] | None:
        """The literal values an expression such as ``PROTOCOLS``, ``tuple(DETECTORS)`` or ``("a", "b")`` stands for
        (a dict stands for its keys), following ``from X import NAME``; None where it is not that simple."""
        if depth > 4:
            return None
        if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
            values = [e.value for e in expr.elts if isinstance(e, ast.Constant)]
            return [str(v) for v in values] if len(values) == len(expr.elts) else None
        if isinstance(expr, ast.Dict):
            keys = [k.value for k in expr.keys if isinstance(k, ast.Constant)]
            return [str(k) for k in keys] if len(keys) == len(expr.keys) else None
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("tuple", "list", "sorted") \
                and len(expr.args) == 1:
            return self.constant_names(module, expr.args[0], depth + 1)
        if isinstance(expr, ast.Name):
            if expr.id in module.values:
                return self.constant_names(module, module.values[expr.id], depth + 1)
            if expr.id in module.imports:
                other = self.of_import(module.imports[expr.id][0])
                if other is not None:
                    return self.constant_names(other, ast.Name(id=module.imports[expr.id][1]), depth + 1)
        return None


def markdown_of_rst(text: str) -> str:
    """Docstring markup as Markdown: ``code`` -> `code`, :role:`x` -> `x`; one line."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return " ".join(text.split())


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def default_of(module: Module, value: ast.expr | None) -> tuple[str, str | None]:
    """(the default as shown, the section class name where the field is a nested section)."""
    if value is None:
        return "required", None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return default_of(module, keyword.value)
            if keyword.arg == "default_factory":
                factory = keyword.value
                if isinstance(factory, ast.Name):
                    if factory.id in ("list", "tuple"):
                        return "`[]`", None
                    if factory.id == "dict":
                        return "`{}`", None
                    return "", factory.id  # a nested section
                if isinstance(factory, ast.Lambda):
                    return f"computed at start: `{ast.unparse(factory.body)}`", None
        return f"`{ast.unparse(value)}`", None
    try:
        literal = ast.literal_eval(value)
    except ValueError:
        return f"`{ast.unparse(value)}`", None
    return f"`{yaml_literal(literal)}`", None


def yaml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else (f'"{value}"' if re.fullmatch(r"[0-9.]+|true|false|yes|no|null", value)
                                         else value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_literal(v) for v in value) + "]"
    return repr(value)


def field_docs(cls: ast.ClassDef) -> list[tuple[str, ast.AnnAssign, str]]:
    """(name, the annotated assignment, the docstring right after it) of every field, in order."""
    out = []
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if "ClassVar" in ast.unparse(node.annotation):
                continue
            doc = ""
            following = body[i + 1] if i + 1 < len(body) else None
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
                    and isinstance(following.value.value, str):
                doc = following.value.value
            out.append((node.target.id, node, doc))
    return out


def _self_attr(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _raises(body: list[ast.stmt]) -> bool:
    return any(isinstance(s, ast.Raise) for s in body)


def rules(modules: Modules, module: Module, cls: ast.ClassDef) -> dict[str, list[str]]:
    """What ``check()`` enforces per field: ``positive`` -> "> 0", ``fraction`` -> "in (0, 1]", ``choice`` -> "one
    of ...", ``if self.x < 0: raise`` -> ">= 0", ``for n in self.x: if n not in NAMES: raise`` -> "each one of ..."."""
    found: dict[str, list[str]] = {}
    check = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        return found
    inverse = {ast.Lt: ">=", ast.LtE: ">", ast.Gt: "<=", ast.GtE: "<"}
    named = {"check_name": "a topic level: 1-64 letters, digits, `.`, `_`, `-`",
             "check_prefix": "levels of letters, digits, `.`, `_`, `-` joined by `/`"}
    for node in ast.walk(check):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in named and node.args \
                and _self_attr(node.args[0]):
            found.setdefault(_self_attr(node.args[0]), []).append(named[node.func.id])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args \
                and isinstance(node.args[0], ast.Name) and node.args[0].id == "self":
            names = [a.value for a in node.args[1:] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if node.func.id == "positive":
                for name in names:
                    found.setdefault(name, []).append("> 0")
            elif node.func.id == "fraction":
                for name in names:
                    found.setdefault(name, []).append("in (0, 1]")
            elif node.func.id == "choice" and len(node.args) == 3 and names:
                choices = modules.constant_names(module, node.args[2])
                text = "one of " + ", ".join(f"`{c}`" for c in choices) if choices else "one of the known names"
                found.setdefault(names[0], []).append(text)
        elif isinstance(node, ast.If) and _raises(node.body) and isinstance(node.test, ast.Compare) \
                and len(node.test.ops) == 1 and type(node.test.ops[0]) in inverse:
            name = _self_attr(node.test.left)
            bound = node.test.comparators[0]
            if name and isinstance(bound, ast.Constant):
                found.setdefault(name, []).append(f"{inverse[type(node.test.ops[0])]} {bound.value!r}")
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            name = _self_attr(node.iter)
            for inner in ast.walk(node):
                if name and isinstance(inner, ast.If) and _raises(inner.body) and isinstance(inner.test, ast.Compare) \
                        and isinstance(inner.test.ops[0], ast.NotIn) and isinstance(inner.test.left, ast.Name) \
                        and inner.test.left.id == node.target.id:
                    choices = modules.constant_names(module, inner.test.comparators[0])
                    if choices:
                        found.setdefault(name, []).append("each one of " + ", ".join(f"`{c}`" for c in choices))
    return found


def section_table(modules: Modules, module: Module, cls: ast.ClassDef, prefix: str) -> list[str]:
    checks = rules(modules, module, cls)
    lines = ["| key | type | default | checked | what |", "| --- | --- | --- | --- | --- |"]
    for name, node, doc in field_docs(cls):
        default, nested = default_of(module, node.value)
        if nested:
            continue
        rule = "; ".join(checks.get(name, [])) or ""
        lines.append(f"| `{prefix}{name}` | `{cell(ast.unparse(node.annotation))}` | {cell(default)} | {cell(rule)} "
                     f"| {cell(markdown_of_rst(doc))} |")
    return lines


def reference(root: Path) -> str:
    modules = Modules(root)
    module = modules.get(CONFIG_MODULE)
    if ROOT_CLASS not in module.classes:
        raise PluginError(f"config reference: no class {ROOT_CLASS} in {CONFIG_MODULE}")
    top = module.classes[ROOT_CLASS]
    out: list[str] = []
    scalars = []
    for name, node, _doc in field_docs(top):
        _, nested = default_of(module, node.value)
        section = nested or ast.unparse(node.annotation)
        found = modules.find_class(module, section)
        if found is None:
            scalars.append(name)
            continue
        where, cls = found
        out.append(f"### `{name}`\n")
        intro = ast.get_docstring(cls)
        source = f"`{cls.name}` in `{where.relative}`"
        out.append((markdown_of_rst(intro) + " " if intro else "") + f"Defined by {source}.\n")
        out.extend(section_table(modules, where, cls, f"{name}."))
        out.append("")
    if scalars:
        out.append("### Top level\n")
        out.append(f"Defined by `{ROOT_CLASS}` in `{CONFIG_MODULE}`.\n")
        lines = section_table(modules, module, top, "")
        keep = lines[:2] + [line for line in lines[2:] if any(line.startswith(f"| `{n}`") for n in scalars)]
        out.extend(keep)
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "```config-reference" not in markdown:
        return markdown
    root = Path(config["config_file_path"]).resolve().parent
    generated = reference(root)
    return BLOCK.sub(lambda _: generated, markdown)
