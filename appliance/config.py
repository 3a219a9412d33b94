"""Configuration: typed sections, merged in one documented order.

Precedence, lowest to highest: built-in defaults < profile TOML < user
`config.toml` < environment (`APPLIANCE_*`) < command-line flags.

Every key `[section] key` can be set from the environment as
`APPLIANCE_SECTION_KEY`; where a key name is unique across sections the short
form `APPLIANCE_KEY` works too (so `[search] searxng_url` is
`APPLIANCE_SEARXNG_URL` and `[model] path` is `APPLIANCE_MODEL_PATH`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError
from appliance.ggufmeta import read_metadata
from appliance.paths import AppDirs, app_dirs
from appliance.policy import redact, redact_url, redacted_snapshot
from appliance.textutil import did_you_mean
from appliance.versions import VERSION_SETTINGS, canonical_version, version_from_metadata, version_from_names

BACKENDS = ("llamacpp", "openai", "replay")
EVICTION_MODES = ("exact", "blocks", "shift")
# llama.cpp KV cache types offered by [model] kv_cache_type, most precise first.
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
FLASH_ATTN_MODES = ("auto", "on", "off")
CONTINUATIONS = ("auto", "continue_final_message", "completions")
DEFAULT_PROFILE = "cpu-8b"


@dataclass
class ModelSettings:
    backend: str = "llamacpp"
    # Local GGUF weights: an explicit path wins; otherwise models_dir/file.
    path: str = ""
    repo: str = ""
    file: str = ""
    sha256: str = ""
    size_bytes: int = 0
    # OpenAI-compatible server.
    base_url: str = "http://127.0.0.1:8080/v1"
    name: str = ""
    api_key: str = ""
    request_timeout: float = 600.0
    retries: int = 4
    # How the server continues an assistant message (llm/openai.py): auto (from /v1/models),
    # continue_final_message (vLLM, SGLang, llama-server) or completions (llama-cpp-python's server).
    continuation: str = "auto"
    # Replay backend: JSONL, one {"content": ...} per assistant turn.
    replay: str = ""
    # The MiroThinker version (1.0, 1.5, 1.7): it sets [agent] max_turns and
    # retry_with_summary where nothing else does (appliance/versions.py).
    # "": read it from the weights' name or GGUF metadata.
    version: str = ""
    # Engine and sampling (MiroThinker v1.0 defaults).
    context_length: int = 32768
    n_gpu_layers: int = 0
    n_threads: int = 0
    n_batch: int = 512
    max_tokens: int = 16384
    temperature: float = 1.0
    top_p: float = 0.95
    repeat_penalty: float = 1.05
    seed: int = -1
    # An interrupted run leaves its KV cache in its run directory when it is at
    # most this big, so `appliance resume` does not evaluate the prefix again (0: never).
    kv_checkpoint_mb: int = 4096
    # llama.cpp's KV cache: f16, or q8_0 / q4_0 (about half / a quarter of the
    # memory, so a longer context fits; the memory plan uses the same value).
    kv_cache_type: str = "f16"
    # Flash attention: "auto" turns it on where a quantized cache needs it; on; off.
    flash_attn: str = "auto"
    # Prompt-lookup decoding on llama.cpp: draft up to this many tokens by finding
    # the last tokens earlier in the prompt, verify them in one batch (0: off).
    prompt_lookup: int = 0
    # Optional GBNF grammars constraining normal turns and the summary turn
    # (file paths). Useful for small models that slip the format, and for
    # deterministic tests with random weights.
    grammar: str = ""
    summary_grammar: str = ""


@dataclass
class AgentSettings:
    max_turns: int = 600
    keep_last: int = 5
    max_rollbacks: int = 5
    summary_retries: int = 3
    tool_timeout: float = 600.0
    result_max_chars: int = 100_000
    # "exact" is the reference's last-K (the faithful default); "blocks" evicts
    # results `eviction_block` at a time (0 = 2K: K..3K-1 results visible) so
    # the prompt prefix stays stable for the KV cache; "shift" shows the exact
    # view and splices evicted results out of llama.cpp's KV cache instead of
    # re-evaluating what follows them (approximate; see docs/performance.md).
    eviction: str = "exact"
    eviction_block: int = 0
    # The v1.0 evaluation configuration hides this tool; offering it changes
    # the system prompt the model sees.
    offer_download_tool: bool = False
    # A task is up to 1 + attempts runs (the reference's context_compress_limit):
    # a run that ends without a \boxed{} answer writes a failure summary and the
    # task starts again with it (agent/attempts.py). 0: one run, today's behaviour.
    attempts: int = 5
    # Write that failure summary (the reference turns it off for MiroThinker 1.7).
    retry_with_summary: bool = True
    # Tokens the text of attached files may take in the task message, shared among them
    # (0: a quarter of the context window); the reference's 200,000-character cap applies too.
    attachment_tokens: int = 0


@dataclass
class ToolsSettings:
    enabled: list[str] = field(
        default_factory=lambda: ["tool-python", "search_and_scrape_webpage", "jina_scrape_llm_summary"]
    )


@dataclass
class SandboxSettings:
    # The bubblewrap binary (a name looked up on PATH, or a path).
    bwrap: str = "bwrap"
    # The sandbox's interpreter; empty: the appliance's own (sys.executable).
    python: str = ""
    cpu_seconds: int = 600
    memory_mb: int = 4096
    max_processes: int = 256
    max_file_mb: int = 1024
    open_files: int = 1024
    command_timeout: float = 600.0
    command_output_chars: int = 100_000
    python_output_chars: int = 20_000


@dataclass
class SearchSettings:
    searxng_url: str = "http://127.0.0.1:8888"
    searxng_src: str = ""
    timeout: float = 20.0
    # Local FTS5 corpus (`appliance corpus add`); "" is corpus.db in the data dir.
    corpus_db: str = ""
    zim_paths: list[str] = field(default_factory=list)
    # Sources google_search merges, in tie-break order; each is used when configured.
    sources: list[str] = field(default_factory=lambda: ["searxng", "corpus", "zim"])
    # Reciprocal rank fusion constant: score = sum of 1 / (fusion_k + rank).
    fusion_k: int = 60
    # SearXNG result pages one search may read to fill `num` results.
    max_pages: int = 5
    # `appliance searxng start`: the Python environment with SearXNG's requirements
    # ("" is searxng/venv in the data dir), the engines to keep ([] = SearXNG's
    # defaults) and an optional SQLite docs(title, url, content) served as "localdocs".
    searxng_venv: str = ""
    searxng_engines: list[str] = field(default_factory=list)
    searxng_docs_db: str = ""


@dataclass
class ScrapeSettings:
    timeout: float = 30.0
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    allow_private: bool = False
    # Non-public destinations opened anyway: "10.1.0.0/16", "wiki.lan", "127.0.0.1:8123".
    allow_hosts: list[str] = field(default_factory=list)
    user_agent: str = "appliance-research-agent/0.1"
    # Page text handed to the extractor at most (the reference's 409,600 characters).
    max_chars: int = 409_600
    # Read pages are cached by URL ("" is pages.db in the cache dir); 0 hours disables.
    cache_db: str = ""
    cache_ttl_hours: float = 24.0
    cache_max_mb: int = 200


@dataclass
class ExtractionSettings:
    # "same" uses the agent's own backend; otherwise the keys below describe
    # a separate (usually smaller) model.
    backend: str = "same"
    path: str = ""
    base_url: str = ""
    name: str = ""
    api_key: str = ""
    context_length: int = 0
    max_tokens: int = 4096
    # Optional GBNF file constraining extraction replies (llamacpp only).
    output_grammar: str = ""


@dataclass
class ArchiveSettings:
    # Every search response and fetched document is kept, as fetched, in a WARC file in the run's directory.
    enabled: bool = True
    # Per run, all sessions of it together; past it the run goes on and the gap is recorded.
    max_mb: int = 1024
    # Where search and fetch are answered: "live" (the network; a resumed or re-run run reuses
    # what it already archived), or "archive:RUN_ID" / "archive:PATH" (that archive only, never the network).
    web: str = "live"


@dataclass
class EvalSettings:
    # An LLM judge for `appliance eval` (any OpenAI-compatible server); empty: GAIA exact match only.
    judge_url: str = ""
    judge_model: str = ""
    judge_api_key: str = ""
    # Optional GBNF grammar file for a llama.cpp judge (forces a one-word verdict).
    judge_grammar: str = ""


@dataclass
class UiSettings:
    theme: str = "dark"


@dataclass(frozen=True)
class McpServerConfig:
    """One external MCP server from `[mcp_servers.NAME]`: a stdio command or a streamable HTTP URL.

    `name` is what the model writes in `<server_name>`. `env` and `headers` may
    hold secrets: they are redacted wherever settings are shown or recorded.
    """

    name: str
    command: tuple[str, ...] = ()
    url: str = ""
    env: dict[str, str] = field(default_factory=dict, hash=False)
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    cwd: str = ""
    # Seconds one call may take (0: [agent] tool_timeout), and to start, initialize and list tools.
    timeout: float = 0.0
    startup_timeout: float = 30.0
    # Only these tools are offered to the model ([]: all the server lists).
    tools: tuple[str, ...] = ()
    enabled: bool = True

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"

    def target(self) -> str:
        """The command line or URL, for messages (never the environment, headers or URL secrets)."""
        return shlex.join(self.command) if self.command else redact_url(self.url)

    def as_dict(self, *, redact: bool = True) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("name")
        values["command"] = list(self.command)
        values["tools"] = list(self.tools)
        return _redacted(values) if redact else values


def _redacted(values: dict[str, Any]) -> dict[str, Any]:
    hidden: dict[str, Any] = redact(values).value
    return hidden


MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MCP_KEYS = ("command", "args", "url", "env", "headers", "cwd", "timeout", "startup_timeout", "tools", "enabled")


def _string_table(value: Any, where: str, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where} {key} must be a table of strings", f'write {key} = {{ NAME = "value" }}')
    table: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(f"{where} {key}.{k} must be a string, got {v!r}", f'write {k} = "..."')
        table[k] = str(v)
    return table


def _string_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} {key} must be a list of strings, got {value!r}", f'write {key} = ["...", "..."]')
    return tuple(value)


def parse_mcp_server(name: str, table: Any, origin: str) -> McpServerConfig:
    """`[mcp_servers.NAME]` as a checked McpServerConfig; every mistake is a ConfigError naming it."""
    where = f"[mcp_servers.{name}] in {origin}:"
    if not MCP_SERVER_NAME.match(name):
        raise ConfigError(
            f"MCP server name '{name}' in {origin} is not usable as a <server_name>",
            "use letters, digits, '_', '-' or '.' (at most 64), starting with a letter or digit",
        )
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table", f'write [mcp_servers.{name}] with command = [...] or url = "..."')
    for key in table:
        if key not in _MCP_KEYS:
            raise ConfigError(
                f"{where} unknown key '{key}'" + did_you_mean(str(key), _MCP_KEYS),
                f"valid keys: {', '.join(_MCP_KEYS)}",
            )
    raw_command = table.get("command", [])
    if isinstance(raw_command, str):
        command = tuple(shlex.split(raw_command))
    else:
        command = _string_list(raw_command, where, "command")
    command += _string_list(table.get("args", []), where, "args")
    if command and command[0].startswith("~"):
        command = (str(Path(command[0]).expanduser()), *command[1:])  # "~/bin/server" works as in a shell
    url = table.get("url", "")
    if not isinstance(url, str):
        raise ConfigError(f"{where} url must be a string", 'write url = "http://127.0.0.1:PORT/mcp"')
    if bool(command) == bool(url):
        raise ConfigError(
            f"{where} give either command (a stdio server) or url (streamable HTTP), not "
            + ("both" if command else "neither"),
            'command = ["python", "-m", "my_server"]  or  url = "http://127.0.0.1:8000/mcp"',
        )
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where} url {url!r} is not an http(s) URL", "the streamable HTTP endpoint, ending in /mcp")
    numbers: dict[str, float] = {}
    for key, default, minimum in (("timeout", 0.0, 0.0), ("startup_timeout", 30.0, 0.1)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ConfigError(f"{where} {key} must be a number of seconds >= {minimum:g}, got {value!r}",
                              f"{key} = 60")  # fmt: skip
        numbers[key] = float(value)
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where} enabled must be true or false", "enabled = false")
    if "env" in table and not command:
        raise ConfigError(f"{where} env applies to stdio servers only", "use headers for an HTTP server")
    if "headers" in table and not url:
        raise ConfigError(f"{where} headers apply to HTTP servers only", "use env for a stdio server")
    cwd = table.get("cwd", "")
    if not isinstance(cwd, str):
        raise ConfigError(f"{where} cwd must be a path string", 'cwd = "~/projects/wiki"')
    return McpServerConfig(
        name=name,
        command=command,
        url=url,
        env=_string_table(table.get("env", {}), where, "env"),
        headers=_string_table(table.get("headers", {}), where, "headers"),
        cwd=cwd,
        timeout=numbers["timeout"],
        startup_timeout=numbers["startup_timeout"],
        tools=_string_list(table.get("tools", []), where, "tools"),
        enabled=enabled,
    )


def _merge_mcp_servers(
    servers: dict[str, McpServerConfig], origins: dict[str, str], layer: dict[str, Any], origin: str
) -> None:
    """Take `mcp_servers` out of a profile or config layer; a later layer replaces a server by name."""
    tables = layer.pop("mcp_servers", None)
    if tables is None:
        return
    if not isinstance(tables, Mapping):
        raise ConfigError(f"mcp_servers in {origin} must be tables", "write [mcp_servers.NAME] tables")
    for name, table in tables.items():
        servers[name] = parse_mcp_server(str(name), table, origin)
        origins[f"mcp_servers.{name}"] = origin


@dataclass
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    tools: ToolsSettings = field(default_factory=ToolsSettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    scrape: ScrapeSettings = field(default_factory=ScrapeSettings)
    extraction: ExtractionSettings = field(default_factory=ExtractionSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    profile: str = DEFAULT_PROFILE
    # External MCP servers by name, in configuration order (enabled or not).
    mcp_servers: dict[str, McpServerConfig] = field(default_factory=dict)
    # Where each value came from, for `appliance doctor` and the status screen.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    dirs: AppDirs = field(default_factory=app_dirs, compare=False, repr=False)

    def model_path(self) -> Path | None:
        if self.model.path:
            return Path(self.model.path).expanduser()
        if self.model.file:
            return self.dirs.models_dir / self.model.file
        return None

    def as_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """Every section as plain data; secrets replaced (appliance.policy.redact), for history and display."""
        out: dict[str, Any] = {"profile": self.profile}
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        out["mcp_servers"] = {name: server.as_dict(redact=False) for name, server in self.mcp_servers.items()}
        return _redacted(out) if redact else out

    def snapshot(self) -> dict[str, Any]:
        """What a run records: the redacted settings and, under "redacted", the paths of what was hidden."""
        return redacted_snapshot(self.as_dict(redact=False))

    def enabled_mcp_servers(self) -> list[McpServerConfig]:
        return [server for server in self.mcp_servers.values() if server.enabled]


SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Settings)
    if f.name not in ("profile", "origins", "dirs", "mcp_servers")
}


def _section_fields(section: str) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


# APPLIANCE_* variables that are not config keys: directories, the profile, and
# the installer's and test script's own switches.
NON_CONFIG_ENV = frozenset({"APPLIANCE_HOME", "APPLIANCE_PROFILE", "APPLIANCE_SHARED_DIR", "APPLIANCE_PREFIX",
                            "APPLIANCE_TUNE_NATIVE", "APPLIANCE_SKIP_LINT"})  # fmt: skip
NON_CONFIG_ENV_PREFIXES = ("APPLIANCE_TEST_", "APPLIANCE_INSTALL_")


def env_names() -> dict[str, tuple[str, str]]:
    """Environment variable name -> (section, key), long and unique short forms."""
    names: dict[str, tuple[str, str]] = {}
    short_count: dict[str, int] = {}
    for section in SECTIONS:
        for key in _section_fields(section):
            names[f"APPLIANCE_{section}_{key}".upper()] = (section, key)
            short_count[key] = short_count.get(key, 0) + 1
    for section in SECTIONS:
        for key in _section_fields(section):
            short = f"APPLIANCE_{key}".upper()
            if short_count[key] == 1 and short not in names:
                names[short] = (section, key)
    return names


# ---------------------------------------------------------------- profiles


def builtin_profiles_dir() -> Path:
    return Path(str(resources.files("appliance") / "profiles"))


def profile_search_path(dirs: AppDirs) -> list[Path]:
    return [dirs.config_dir / "profiles", builtin_profiles_dir()]


def available_profiles(dirs: AppDirs | None = None) -> list[str]:
    dirs = dirs or app_dirs()
    names: set[str] = set()
    for directory in profile_search_path(dirs):
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.toml"))
    return sorted(names)


PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def find_profile(name: str, dirs: AppDirs) -> Path:
    if not PROFILE_NAME.match(name) or ".." in name:
        names = ", ".join(available_profiles(dirs))
        raise ConfigError(f"{name!r} is not a profile name", f"choose one of: {names} (see `appliance profiles`)")
    for directory in profile_search_path(dirs):
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = available_profiles(dirs)
    raise ConfigError(
        f"unknown profile '{name}'" + did_you_mean(name, known),
        f"choose one of: {', '.join(known)}" if known else "reinstall the appliance",
    )


def read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", "check the path and permissions") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}", f"fix or remove {path}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {exc.start})", f"save {path} as UTF-8, or remove it"
        ) from exc


def load_profile(name: str, dirs: AppDirs) -> dict[str, Any]:
    data = read_toml(find_profile(name, dirs), f"profile '{name}'")
    data.pop("profile", None)  # the [profile] table is metadata (name, description)
    return data


def profile_metadata(name: str, dirs: AppDirs | None = None) -> dict[str, Any]:
    data = read_toml(find_profile(name, dirs or app_dirs()), f"profile '{name}'")
    meta = data.get("profile", {})
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------- merging


def _coerce(section: str, key: str, value: Any, origin: str) -> Any:
    """Convert `value` to the type of the field, with a clear error on mismatch."""
    fld = _section_fields(section)[key]
    default = fld.default_factory() if fld.default_factory is not dataclasses.MISSING else fld.default
    where = f"[{section}] {key} (from {origin})"
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool) or not math.isfinite(float(value)):  # nan and inf are no setting
                raise ValueError(value)
            return float(value)
        if isinstance(default, list):
            if isinstance(value, str):
                value = (
                    json.loads(value)
                    if value.strip().startswith("[")
                    else [v.strip() for v in value.split(",") if v.strip()]
                )
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return list(value)
        if isinstance(default, str):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        kind = "finite number" if isinstance(default, float) else type(default).__name__
        raise ConfigError(f"{where} must be a {kind}, got {value!r}", f"set {key} to a {kind}") from exc
    return value


def _apply_layer(
    merged: dict[str, dict[str, Any]],
    origins: dict[str, str],
    layer: Mapping[str, Any],
    origin: str,
) -> None:
    for section, values in layer.items():
        if section not in SECTIONS:
            # mcp_servers is a table of tables, taken out before this point: a near miss means it.
            hint = did_you_mean(section, [*SECTIONS, "mcp_servers"], "[{}]")
            raise ConfigError(
                f"unknown section [{section}] in {origin}" + hint.replace("[mcp_servers]", "[mcp_servers.NAME]"),
                f"valid sections: {', '.join(SECTIONS)}, mcp_servers.NAME",
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] in {origin} must be a table", f"write it as [{section}] with keys below")
        known = _section_fields(section)
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"unknown key '{key}' in [{section}] of {origin}" + did_you_mean(key, known),
                    f"valid keys: {', '.join(known)}",
                )
            merged[section][key] = _coerce(section, key, value, origin)
            origins[f"{section}.{key}"] = origin


def load_settings(
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build the effective settings. `overrides` maps "section.key" to CLI values."""
    env = dict(os.environ if environ is None else environ)
    dirs = app_dirs(env)
    config_path = config_file or dirs.config_file
    user_config: dict[str, Any] = read_toml(config_path, "config file") if config_path.is_file() else {}
    # An empty --profile is a mistake; an empty APPLIANCE_PROFILE means unset, as for any variable.
    candidates = (profile, env.get("APPLIANCE_PROFILE") or None, user_config.pop("profile", None))
    chosen = next((name for name in candidates if name is not None), DEFAULT_PROFILE)
    user_config.pop("profile", None)
    if not isinstance(chosen, str):
        raise ConfigError(f"profile in {config_path} must be a string", 'write profile = "NAME"')

    merged: dict[str, dict[str, Any]] = {s: dataclasses.asdict(cls()) for s, cls in SECTIONS.items()}
    origins: dict[str, str] = {}
    mcp_servers: dict[str, McpServerConfig] = {}
    profile_layer = load_profile(chosen, dirs)
    for layer, origin in ((profile_layer, f"profile {chosen}"), (user_config, str(config_path))):
        _merge_mcp_servers(mcp_servers, origins, layer, origin)
        _apply_layer(merged, origins, layer, origin)

    names = env_names()
    unknown = sorted(
        name for name in env
        if name.startswith("APPLIANCE_") and name not in names and name not in NON_CONFIG_ENV
        and not name.startswith(NON_CONFIG_ENV_PREFIXES)
    )  # fmt: skip
    if unknown:
        # A typo (or an ambiguous short form such as APPLIANCE_MAX_TOKENS, a key of two
        # sections) would otherwise be ignored without a word.
        name = unknown[0]
        key = name.removeprefix("APPLIANCE_").lower()
        sections = [s for s in SECTIONS if key in _section_fields(s)]
        if len(sections) > 1:
            hint = " (a key of " + ", ".join(f"[{s}]" for s in sections) + ": say which, e.g. "
            hint += f"APPLIANCE_{sections[0].upper()}_{key.upper()})"
        else:
            hint = did_you_mean(name, [*names, *NON_CONFIG_ENV], "{}")
        raise ConfigError(
            f"unknown environment variable {name}{hint}",
            "use APPLIANCE_SECTION_KEY for [section] key (see README, Configuration), or unset it",
        )
    env_layer: dict[str, dict[str, Any]] = {}
    for name, (section, key) in names.items():
        if name in env:
            env_layer.setdefault(section, {})[key] = env[name]
    for section, values in env_layer.items():
        for key, value in values.items():
            _apply_layer(merged, origins, {section: {key: value}}, "environment")

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply_layer(merged, origins, {section: {key: value}}, "command line")

    _imply_attempts(merged, origins)
    _apply_model_version(merged, origins, dirs)
    settings = Settings(
        **{s: SECTIONS[s](**merged[s]) for s in SECTIONS},
        profile=chosen,
        mcp_servers=mcp_servers,
        origins=origins,
        dirs=dirs,
    )
    validate(settings)
    return settings


def _imply_attempts(merged: dict[str, dict[str, Any]], origins: dict[str, str]) -> None:
    """keep_last = -1 without an explicit attempts means attempts = 0.

    Every reference configuration that keeps all tool results (mirothinker_v1.0,
    v1.5) runs without context management (context_compress_limit 0), and every
    one with attempts keeps 5: attempts exist because a window fills, which
    keeping everything makes certain. Set explicitly together, validate() refuses them.
    """
    agent = merged["agent"]
    if agent["keep_last"] == -1 and "agent.attempts" not in origins:
        agent["attempts"] = 0
        origins["agent.attempts"] = f"implied by keep_last = -1 ({origins.get('agent.keep_last', 'default')})"


def _apply_model_version(merged: dict[str, dict[str, Any]], origins: dict[str, str], dirs: AppDirs) -> None:
    """The version's own max_turns and retry_with_summary, where no layer set them."""
    model = merged["model"]
    given = str(model["version"])
    if given:
        version, how = canonical_version(given), "[model] version"
        if version is None:
            raise ConfigError(
                f"unknown [model] version '{given}' (from {origins.get('model.version', 'default')})",
                f"use one of: {', '.join(VERSION_SETTINGS)} (or leave it empty to detect it)",
            )
        model["version"] = version
    else:
        # The weights in use: an explicit path replaces the profile's repo/file; a server names its model.
        if model["backend"] == "openai":
            names = [model["name"]]
        else:
            names = [model["path"]] if model["path"] else [model["file"], model["repo"]]
        version, how = version_from_names(str(n) for n in names), "the weights' name"
        weights = Path(model["path"]).expanduser() if model["path"] else dirs.models_dir / model["file"]
        local = model["backend"] == "llamacpp" and bool(model["path"] or model["file"])
        if version is None and local and weights.is_file():
            with contextlib.suppress(ConfigError):  # a header read, only when the name says nothing
                version, how = version_from_metadata(read_metadata(weights)), "the GGUF metadata"
        if version is None:
            return
        model["version"] = version
        origins["model.version"] = f"detected from {how}"
    for key, value in VERSION_SETTINGS[version].items():
        if f"agent.{key}" not in origins:
            merged["agent"][key] = value
            origins[f"agent.{key}"] = f"MiroThinker {version} (from {how})"


# Numbers out of these ranges are usage errors: "section.key" -> (lowest allowed, is the lowest itself allowed).
_MINIMUMS: dict[str, tuple[float, bool]] = {
    "model.temperature": (0, True),
    "model.top_p": (0, False),
    "model.repeat_penalty": (0, False),
    "model.max_tokens": (1, True),
    "model.request_timeout": (0, False),
    "model.retries": (0, True),
    "model.n_gpu_layers": (-1, True),
    "model.n_threads": (0, True),
    "model.n_batch": (1, True),
    "model.kv_checkpoint_mb": (0, True),
    "agent.max_rollbacks": (0, True),
    "agent.summary_retries": (0, True),
    "agent.tool_timeout": (0, False),
    "agent.result_max_chars": (1, True),
    "sandbox.cpu_seconds": (1, True),
    "sandbox.memory_mb": (1, True),
    "sandbox.max_processes": (1, True),
    "sandbox.max_file_mb": (1, True),
    "sandbox.open_files": (1, True),
    "sandbox.command_timeout": (0, False),
    "sandbox.command_output_chars": (1, True),
    "sandbox.python_output_chars": (1, True),
    "search.timeout": (0, False),
    "search.fusion_k": (0, True),
    "search.max_pages": (1, True),
    "scrape.timeout": (0, False),
    "scrape.max_bytes": (1, True),
    "scrape.max_redirects": (0, True),
    "scrape.max_chars": (1, True),
    "scrape.cache_ttl_hours": (0, True),
    "scrape.cache_max_mb": (0, True),
    "extraction.max_tokens": (1, True),
    "extraction.context_length": (0, True),
}
_MAXIMUMS: dict[str, float] = {"model.top_p": 1}


def _check_ranges(settings: Settings) -> None:
    for dotted, (lowest, inclusive) in _MINIMUMS.items():
        section, _, key = dotted.partition(".")
        value = getattr(getattr(settings, section), key)
        highest = _MAXIMUMS.get(dotted, math.inf)
        if (value >= lowest if inclusive else value > lowest) and value <= highest:
            continue
        wanted = f"{'>=' if inclusive else '>'} {lowest:g}" + (f" and <= {highest:g}" if highest < math.inf else "")
        origin = settings.origins.get(dotted, "the defaults")
        raise ConfigError(f"[{section}] {key} must be {wanted}, got {value:g} (from {origin})", f"set {key} {wanted}")


def validate(settings: Settings) -> None:
    _check_ranges(settings)
    if settings.model.backend not in BACKENDS:
        raise ConfigError(
            f"unknown backend '{settings.model.backend}'" + did_you_mean(settings.model.backend, BACKENDS),
            f"use --backend {' | '.join(BACKENDS)}",
        )
    if settings.model.continuation not in CONTINUATIONS:
        raise ConfigError(
            f"unknown [model] continuation '{settings.model.continuation}'", f"use one of: {', '.join(CONTINUATIONS)}"
        )
    agent = settings.agent
    if agent.max_turns < 1:
        raise ConfigError(f"max_turns must be at least 1, got {agent.max_turns}", "use --max-turns N with N >= 1")
    if agent.keep_last < -1:
        raise ConfigError(f"keep_last must be -1 (keep all) or >= 0, got {agent.keep_last}", "use --keep-last K")
    if agent.attachment_tokens < 0:
        raise ConfigError(
            f"attachment_tokens must be >= 0, got {agent.attachment_tokens}", "use 0 (a quarter of the context window)"
        )
    if agent.attempts < 0:
        raise ConfigError(
            f"attempts must be 0 (one run) or more, got {agent.attempts}", "use --attempts N with N >= 0 (default 5)"
        )
    if agent.attempts > 0 and agent.keep_last == -1:
        # Only reachable when both were set: keep_last = -1 alone implies attempts = 0 (_imply_attempts).
        raise ConfigError(
            f"attempts ({agent.attempts}) need tool results to be dropped, but keep_last is -1 (keep every result)",
            "the reference never combines them: use --attempts 0 with --keep-last -1, or --keep-last K with K >= 0",
        )
    if agent.eviction not in EVICTION_MODES:
        raise ConfigError(
            f"unknown eviction mode '{agent.eviction}'" + did_you_mean(agent.eviction, EVICTION_MODES),
            f"set [agent] eviction to {', '.join(EVICTION_MODES)}",
        )
    model = settings.model
    if model.kv_cache_type not in KV_CACHE_TYPES:
        raise ConfigError(
            f"unknown kv_cache_type '{model.kv_cache_type}'" + did_you_mean(model.kv_cache_type, KV_CACHE_TYPES),
            f"set [model] kv_cache_type to {', '.join(KV_CACHE_TYPES)}",
        )
    if model.flash_attn not in FLASH_ATTN_MODES:
        raise ConfigError(
            f"unknown flash_attn '{model.flash_attn}'" + did_you_mean(model.flash_attn, FLASH_ATTN_MODES),
            f"set [model] flash_attn to {', '.join(FLASH_ATTN_MODES)}",
        )
    if model.prompt_lookup < 0:
        raise ConfigError(
            f"prompt_lookup must be >= 0, got {model.prompt_lookup}", "set [model] prompt_lookup = 0 (off) or 10"
        )
    if model.kv_cache_type != "f16" and model.flash_attn == "off":
        raise ConfigError(
            f"kv_cache_type {model.kv_cache_type} needs flash attention (llama.cpp quantizes the V cache only with it)",
            'set [model] flash_attn = "auto", or kv_cache_type = "f16"',
        )
    if agent.eviction_block < 0:
        raise ConfigError(
            f"eviction_block must be >= 0, got {agent.eviction_block}", "use 0 (= 2 x keep_last) or a size"
        )
    if settings.model.context_length < 256:
        raise ConfigError(
            f"context_length {settings.model.context_length} is too small", "set [model] context_length >= 256"
        )
