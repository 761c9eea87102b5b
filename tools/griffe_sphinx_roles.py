"""Griffe extension for the API reference: the docstrings' reST idioms, read as Markdown.

pdmp's docstrings are Google style with two reST habits that Markdown would print verbatim:

* roles such as :class:`Modulator`, :func:`~pdmp.backends.torch.concat_head_logits`, :meth:`step`:
  each becomes a cross-reference (an autorefs link) to the object it names, resolved in the scope of
  the documented object the way Python resolves the name (so ``Modulator`` in ``pdmp.backends.torch.logs``
  is ``pdmp.backends.torch.modulator.Modulator``). Names of other libraries (torch, keras, ...) become
  inline code. A pdmp name that does not exist is reported as a warning, which ``mkdocs build --strict``
  turns into an error;
* literal blocks (a paragraph ending in ``::`` followed by an indented block) become fenced code blocks;
* ``#:`` comments above an attribute (Sphinx's attribute docstrings) become its docstring;
* an argument entry naming several parameters (``train, val: ...`` or ``head / decompose: ...``) becomes
  one entry per parameter,
  each with that description (griffe's Google parser reads one name per entry).

A link goes to the name users import when the object is exported (``pdmp.dependency`` rather than
``pdmp.diagnostics.dependency``), which is where the reference documents it; names with a private part
(``pdmp.backends.keras._optimizer_lr``) stay inline code.

Only the rendered text changes; the source is not touched.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from griffe import Attribute, Docstring, Extension, Module, Object

_logger = logging.getLogger("mkdocs.plugins.pdmp_docs")

_ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|attr|data|mod|exc|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")
_CALLABLE_ROLES = {"func", "meth"}
# Other libraries' names: inline code, no link (their inventories would need a download).
_EXTERNAL = {"torch", "lightning", "keras", "tensorflow", "tf", "jax", "numpy", "np", "sklearn", "tqdm"}
_EXTERNAL |= set(sys.stdlib_module_names)
_ARGS_SECTION = re.compile(r"^(?P<indent> *)(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments):\s*$")
_GROUPED_ENTRY = re.compile(r"^(?P<names>[A-Za-z_]\w*(?: *[,/] *[A-Za-z_]\w*)+):(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _split_grouped_args(text: str) -> str:
    """In an Args section, ``a, b: description`` -> ``a: description`` and ``b: description``."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        header = _ARGS_SECTION.match(lines[i])
        out.append(lines[i])
        i += 1
        if not header:
            continue
        section_indent = len(header["indent"])
        item_indent: int | None = None
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > section_indent):
            line = lines[i]
            if line.strip() and item_indent is None:
                item_indent = _indent(line)
            grouped = _GROUPED_ENTRY.match(line.strip()) if line.strip() and _indent(line) == item_indent else None
            if not grouped:
                out.append(line)
                i += 1
                continue
            j = i + 1
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) > (item_indent or 0):
                j += 1
            pad = " " * (item_indent or 0)
            for name in re.split(r"[,/]", grouped["names"]):
                out.append(f"{pad}{name.strip()}:{grouped['rest']}")
                out.extend(lines[i + 1 : j])
            i = j
    return "\n".join(out)


def _literal_blocks(text: str) -> str:
    """``Usage::`` + blank line + indented block -> ``Usage:`` + fenced block (``::`` alone: dropped)."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if not stripped.endswith("::") or i + 1 >= len(lines) or lines[i + 1].strip():
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        block_start = i + 2
        j = block_start
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            j += 1
        block = lines[block_start:j]
        while block and not block[-1].strip():
            block.pop()
        if not block:
            out.append(line)
            i += 1
            continue
        body_indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        head = stripped[:-1] if stripped[:-2].strip() else ""
        pad = " " * indent
        if head:
            out.extend([head, ""])
        out.append(f"{pad}```python")
        out.extend(pad + b[body_indent:] if b.strip() else "" for b in block)
        out.extend([f"{pad}```", ""])
        i = j
    return "\n".join(out)


def _resolve(obj: Object, target: str) -> str | None:
    """The full path ``target`` names in ``obj``'s scope, or None when it cannot be resolved."""
    if target == "pdmp" or target.startswith("pdmp."):
        return target
    first, dot, rest = target.partition(".")
    try:
        resolved = obj.resolve(first)
    except Exception:  # griffe's NameResolutionError, or an alias it cannot follow
        return None
    return f"{resolved}{dot}{rest}"


def _public_paths(package: Module) -> dict[str, str]:
    """Where each exported object is documented: its canonical path -> ``<exporting module>.<name>``."""
    public: dict[str, str] = {}
    modules: list[Module] = [package]
    while modules:
        module = modules.pop()
        modules.extend(member for member in module.modules.values() if not member.is_alias)
        for name in module.exports or ():
            member = module.members.get(str(name))
            if member is not None and member.is_alias:
                path = f"{module.path}.{name}"
                target = member.target_path
                if target not in public or len(path) < len(public[target]):
                    public[target] = path
    return public


def _to_public(path: str, public: dict[str, str]) -> str:
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in public:
            return ".".join([public[prefix], *parts[end:]])
    return path


def _is_private(path: str) -> bool:
    return any(part.startswith("_") and not part.endswith("__") for part in path.split("."))


def _comment_docstring(attribute: Attribute) -> Docstring | None:
    """The ``#:`` lines right above ``attribute``'s assignment, as a docstring."""
    if attribute.lineno is None or attribute.filepath is None or isinstance(attribute.filepath, list):
        return None
    try:
        lines = attribute.lines_collection[attribute.filepath]  # a LinesCollection has no .get()
    except KeyError:
        return None
    comment: list[str] = []
    index = attribute.lineno - 2
    while 0 <= index < len(lines) and lines[index].strip().startswith("#:"):
        comment.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    if not comment:
        return None
    return Docstring("\n".join(comment), lineno=index + 2, parent=attribute)


def _exists(package: Module, path: str) -> bool:
    if path == package.path:
        return True
    try:
        package[path[len(package.path) + 1 :]]
    except Exception:  # KeyError, or an alias whose target is missing
        return False
    return True


class SphinxRoles(Extension):
    """Rewrite every docstring of the ``pdmp`` package (see the module docstring)."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        if pkg.name != "pdmp":
            return
        public = _public_paths(pkg)
        seen: set[int] = set()
        stack: list[Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is None and isinstance(obj, Attribute):
                obj.docstring = _comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = self._rewrite(pkg, public, obj, obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)

    def _rewrite(self, pkg: Module, public: dict[str, str], obj: Object, text: str) -> str:
        def link(match: re.Match[str]) -> str:
            role, target = match["role"], match["target"].strip()
            text = target.rsplit(".", 1)[-1] if match["tilde"] else target
            if role in _CALLABLE_ROLES:
                text += "()"
            path = _resolve(obj, target)
            if path is None or not (path == "pdmp" or path.startswith("pdmp.")):
                if path is None and target.split(".", 1)[0] not in _EXTERNAL:
                    _logger.warning("%s: %s cannot be resolved in this scope", obj.path, match[0])
                return f"`{text}`"
            if not _exists(pkg, path):
                _logger.warning("%s: %s names %s, which does not exist", obj.path, match[0], path)
                return f"`{text}`"
            if _is_private(path):
                return f"`{text}`"
            return f"[`{text}`][{_to_public(path, public)}]"

        return _ROLE.sub(link, _split_grouped_args(_literal_blocks(text)))
