"""Objects back to the YAML (or JSON) document a user writes: what ``zerogate export`` prints.

Defaults are left out, rules are written in flow style (``{email: [a@b.c]}``) as in the
documentation's examples, and the result loads back into equal objects. Secrets are never part of
the model (identity providers carry the *name* of an environment variable), so none can appear here.
No I/O: the caller writes the text.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from zerogate.model.objects import Objects

_RULE_LISTS = ("include", "require", "exclude")


def objects_document(objects: Objects) -> dict[str, Any]:
    """A plain document (YAML keys, JSON-compatible values); empty sections are omitted."""
    data = objects.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return {key: value for key, value in data.items() if value}


_FIRST = ("name", "type", "decision", "domain")


def _styled(node: Any, key: str | None = None, flow: bool = False) -> Any:
    if isinstance(node, dict):
        out = CommentedMap()
        for k in sorted(node, key=lambda k: _FIRST.index(k) if k in _FIRST else len(_FIRST)):
            out[k] = _styled(node[k], k, flow)
        if flow:
            out.fa.set_flow_style()
        return out
    if isinstance(node, list):
        rules = key in _RULE_LISTS
        seq = CommentedSeq(_styled(v, flow=flow or rules) for v in node)
        if rules or flow or all(not isinstance(v, (dict, list)) for v in node):
            seq.fa.set_flow_style()
        return seq
    return node


def dump_yaml(objects: Objects, header: str | None = None) -> str:
    """The objects as a YAML document."""
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    buffer = io.StringIO()
    if header:
        buffer.write("".join(f"# {line}\n" for line in header.splitlines()))
    doc = objects_document(objects)
    if doc:
        yaml.dump(_styled(doc), buffer)
    else:
        buffer.write("{}\n")
    return buffer.getvalue()
