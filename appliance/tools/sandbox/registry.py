"""The sandboxes of a run, kept in the run's directory so a resumed run finds them again.

`RUN_DIR/sandboxes.json` maps each sandbox id to its directories. The first
sandbox of a run uses the run's workspace (`--workspace`, or
RUN_DIR/workspace); later ones get RUN_DIR/sandboxes/ID/home. Every sandbox
has its own /tmp in RUN_DIR/sandboxes/ID/tmp. The file lives outside every
workspace, so nothing in a sandbox can rewrite it.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REGISTRY_FILE = "sandboxes.json"
SANDBOXES_DIR = "sandboxes"
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_sandbox_id() -> str:
    """Shaped like E2B's ids (20 lowercase letters and digits), which the model copies back."""
    return "i" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(19))


@dataclass
class SandboxRecord:
    sandbox_id: str
    workspace: str
    tmp: str
    created: float
    # Code ran in this sandbox's Python kernel; a kernel started after this lost that state.
    python_used: bool = False


class Registry:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / REGISTRY_FILE

    def load(self) -> dict[str, SandboxRecord]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: no sandboxes to find
            return {}
        records = {}
        for key, value in (data.get("sandboxes") or {}).items():
            try:
                records[key] = SandboxRecord(**value)
            except TypeError:
                continue
        return records

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        return self.load().get(sandbox_id)

    def save(self, records: dict[str, SandboxRecord]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{REGISTRY_FILE}.{os.getpid()}.tmp")
        payload = {"sandboxes": {key: asdict(record) for key, record in records.items()}}
        temporary.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        temporary.replace(self.path)

    def update(self, record: SandboxRecord) -> None:
        records = self.load()
        records[record.sandbox_id] = record
        self.save(records)

    def plan(self, sandbox_id: str, first_workspace: Path) -> SandboxRecord:
        """The record a new sandbox gets (saved with `update` once its directories exist)."""
        own = self.run_dir / SANDBOXES_DIR / sandbox_id
        workspace = first_workspace if not self.load() else own / "home"
        return SandboxRecord(sandbox_id, str(workspace), str(own / "tmp"), time.time())
