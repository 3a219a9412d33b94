"""Writing the user's config.toml: merge the installer's keys, write only when something changed."""

from __future__ import annotations

import copy
import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from appliance.config import read_toml


def merged_config(existing: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """`existing` with `updates` laid over it, one table deep; None in `updates` removes a key."""
    out = copy.deepcopy(dict(existing))
    for key, value in updates.items():
        if isinstance(value, Mapping):
            table = dict(out.get(key, {}))
            for sub, sub_value in value.items():
                if sub_value is None:
                    table.pop(sub, None)
                else:
                    table[sub] = sub_value
            if table:
                out[key] = table
            else:
                out.pop(key, None)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def render(config: Mapping[str, Any]) -> str:
    header = "# Written by `appliance install`; edit freely (see docs/install.md). Comments are not kept.\n"
    scalars = {k: v for k, v in config.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in config.items() if isinstance(v, Mapping)}
    return header + tomli_w.dumps({**scalars, **tables})


def update_config(path: Path, updates: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, tuple[Any, Any]]:
    """Apply `updates`; return {"section.key": (old, new)} for what changed (nothing written when empty)."""
    existing = read_toml(path, "config file") if path.is_file() else {}
    new = merged_config(existing, updates)
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(existing) | set(new)):
        old_value, new_value = existing.get(key), new.get(key)
        if isinstance(old_value, Mapping) or isinstance(new_value, Mapping):
            old_table, new_table = dict(old_value or {}), dict(new_value or {})
            for sub in sorted(set(old_table) | set(new_table)):
                if old_table.get(sub) != new_table.get(sub):
                    changes[f"{key}.{sub}"] = (old_table.get(sub), new_table.get(sub))
        elif old_value != new_value:
            changes[key] = (old_value, new_value)
    if changes and not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render(new)
        tomllib.loads(text)  # never write a file the next start cannot read
        if path.is_file():
            path.with_name(path.name + ".bak").write_bytes(path.read_bytes())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    return changes
