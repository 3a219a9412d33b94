"""Configuration precedence, environment mapping and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import available_profiles, env_names, load_settings
from appliance.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_defaults_and_default_profile(appliance_home: Path) -> None:
    settings = load_settings(environ={"APPLIANCE_HOME": str(appliance_home)})
    assert settings.profile == "cpu-8b"
    assert settings.agent.max_turns == 600 and settings.agent.keep_last == 5
    assert settings.model.backend == "llamacpp"
    assert settings.model_path() == appliance_home / "models" / settings.model.file
    assert settings.origins["model.file"] == "profile cpu-8b"


def test_precedence_cli_over_env_over_config_over_profile(appliance_home: Path) -> None:
    write(appliance_home / "config.toml", "[agent]\nkeep_last = 7\nmax_turns = 50\n[model]\ntemperature = 0.5\n")
    env = {"APPLIANCE_HOME": str(appliance_home), "APPLIANCE_AGENT_MAX_TURNS": "40", "APPLIANCE_KEEP_LAST": "3"}
    settings = load_settings(environ=env, overrides={"agent.keep_last": 2})
    assert settings.agent.keep_last == 2  # flag beats env (short form) and config
    assert settings.agent.max_turns == 40  # env beats config
    assert settings.model.temperature == 0.5  # config beats profile
    assert settings.model.top_p == 0.95  # profile value
    assert settings.origins["agent.keep_last"] == "command line"
    assert settings.origins["agent.max_turns"] == "environment"


def test_environment_names_mirror_config_keys() -> None:
    names = env_names()
    assert names["APPLIANCE_SEARXNG_URL"] == ("search", "searxng_url")
    assert names["APPLIANCE_MODEL_PATH"] == ("model", "path")
    assert names["APPLIANCE_SEARCH_SEARXNG_URL"] == ("search", "searxng_url")
    # `path` exists in two sections, so there is no ambiguous short form for it.
    assert "APPLIANCE_PATH" not in names


def test_profile_from_config_and_env(appliance_home: Path) -> None:
    write(appliance_home / "config.toml", 'profile = "remote"\n')
    assert load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}).model.backend == "openai"
    env = {"APPLIANCE_HOME": str(appliance_home), "APPLIANCE_PROFILE": "cpu-8b"}
    assert load_settings(environ=env).profile == "cpu-8b"


def test_user_profiles_directory_is_searched_first(appliance_home: Path) -> None:
    write(appliance_home / "profiles" / "mine.toml", '[profile]\nname = "mine"\n[agent]\nkeep_last = 9\n')
    assert "mine" in available_profiles(load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}).dirs)
    assert load_settings(profile="mine", environ={"APPLIANCE_HOME": str(appliance_home)}).agent.keep_last == 9


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("[agent\nkeep_last = 1\n", "is not valid TOML"),
        ("[agnet]\nkeep_last = 1\n", "(did you mean [agent]?)"),
        ("[agent]\nkeep_lats = 1\n", "(did you mean 'keep_last'?)"),
        ("[agent]\nkeep_last = 'many'\n", "[agent] keep_last (from"),
        ("[model]\nbackend = 'llamacp'\n", "unknown backend 'llamacp' (did you mean 'llamacpp'?)"),
        ("[agent]\nmax_turns = 0\n", "max_turns must be at least 1"),
    ],
)
def test_broken_config_gives_a_clear_error(appliance_home: Path, config: str, fragment: str) -> None:
    write(appliance_home / "config.toml", config)
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"APPLIANCE_HOME": str(appliance_home)})
    assert fragment in info.value.one_line()
    assert "Fix:" in info.value.one_line()


def test_unknown_profile_suggests_a_close_name(appliance_home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(profile="cpu-8", environ={"APPLIANCE_HOME": str(appliance_home)})
    assert "did you mean 'cpu-8b'?" in info.value.one_line()


def test_unreadable_profile_is_an_error(appliance_home: Path) -> None:
    write(appliance_home / "profiles" / "broken.toml", "[model\n")
    with pytest.raises(ConfigError) as info:
        load_settings(profile="broken", environ={"APPLIANCE_HOME": str(appliance_home)})
    assert "profile 'broken'" in info.value.one_line() and "not valid TOML" in info.value.one_line()


def test_env_values_are_typed(appliance_home: Path) -> None:
    env = {
        "APPLIANCE_HOME": str(appliance_home),
        "APPLIANCE_OFFER_DOWNLOAD_TOOL": "yes",
        "APPLIANCE_TOOLS_ENABLED": "tool-python, search_and_scrape_webpage",
        "APPLIANCE_TEMPERATURE": "0.3",
    }
    settings = load_settings(environ=env)
    assert settings.agent.offer_download_tool is True
    assert settings.tools.enabled == ["tool-python", "search_and_scrape_webpage"]
    assert settings.model.temperature == 0.3
    with pytest.raises(ConfigError):
        load_settings(environ={**env, "APPLIANCE_MAX_TURNS": "lots"})


def test_secrets_are_redacted_in_snapshots(appliance_home: Path) -> None:
    env = {"APPLIANCE_HOME": str(appliance_home), "APPLIANCE_MODEL_API_KEY": "sk-secret"}
    settings = load_settings(environ=env)
    assert settings.model.api_key == "sk-secret"
    assert "sk-secret" not in repr(settings.as_dict())
    assert settings.as_dict()["model"]["api_key"] == "***"


def test_unknown_or_ambiguous_environment_variables_are_errors(appliance_home: Path) -> None:
    base = {"APPLIANCE_HOME": str(appliance_home)}
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**base, "APPLIANCE_MAX_TOKENS": "300"})  # model and extraction both have it
    assert "unknown environment variable APPLIANCE_MAX_TOKENS" in info.value.one_line()
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**base, "APPLIANCE_SEARXNG_ULR": "http://x"})
    assert "did you mean APPLIANCE_SEARXNG_URL?" in info.value.one_line()
    # The installer's and the test script's own variables are not config keys.
    settings = load_settings(environ={**base, "APPLIANCE_TEST_VENV": "/v", "APPLIANCE_PREFIX": "/p"})
    assert settings.model.max_tokens > 0


# ---------------------------------------------------------------- attempts


def test_attempts_default_and_the_keep_all_pairing(appliance_home: Path) -> None:
    env = {"APPLIANCE_HOME": str(appliance_home)}
    settings = load_settings(environ=env)
    assert (settings.agent.attempts, settings.agent.retry_with_summary) == (5, True)
    # Keeping every result means no attempts, as in every reference configuration with keep -1.
    kept_all = load_settings(environ=env, overrides={"agent.keep_last": -1})
    assert kept_all.agent.attempts == 0
    assert kept_all.origins["agent.attempts"] == "implied by keep_last = -1 (command line)"
    assert load_settings(environ=env, overrides={"agent.keep_last": -1, "agent.attempts": 0}).agent.attempts == 0


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"agent.attempts": -1}, "attempts must be 0 (one run) or more, got -1"),
        ({"agent.attempts": "two"}, "[agent] attempts (from command line) must be a int, got 'two'"),
        ({"agent.attempts": 1.5}, "must be a int"),
        ({"agent.attempts": 3, "agent.keep_last": -1}, "attempts (3) need tool results to be dropped"),
    ],
)
def test_bad_attempts_are_clear_errors(appliance_home: Path, overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}, overrides=overrides)
    assert fragment in info.value.one_line()


# ---------------------------------------------------------------- per-version settings


@pytest.mark.parametrize(
    ("name", "version", "max_turns", "retry"),
    [
        ("miromind-ai_MiroThinker-v1.0-8B-Q4_K_M.gguf", "1.0", 600, True),
        ("miromind-ai_MiroThinker-v1.5-30B-Q4_K_M.gguf", "1.5", 400, True),
        ("MiroThinker-1.7-mini-Q8_0.gguf", "1.7", 200, False),
    ],
)
def test_the_weights_name_sets_the_versions_run(
    appliance_home: Path, name: str, version: str, max_turns: int, retry: bool
) -> None:
    settings = load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}, overrides={"model.path": f"/m/{name}"})
    assert (settings.model.version, settings.agent.max_turns, settings.agent.retry_with_summary) == (
        version, max_turns, retry,
    )  # fmt: skip
    assert settings.origins["agent.max_turns"] == f"MiroThinker {version} (from the weights' name)"


def test_the_gguf_metadata_sets_it_when_the_name_does_not(appliance_home: Path, tmp_path: Path) -> None:
    from tests.tinygguf import write_tiny_gguf

    weights = write_tiny_gguf(tmp_path / "weights.gguf", name="MiroThinker-1.7-mini")
    settings = load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}, overrides={"model.path": str(weights)})
    assert (settings.model.version, settings.agent.max_turns, settings.agent.retry_with_summary) == ("1.7", 200, False)
    assert settings.origins["model.version"] == "detected from the GGUF metadata"


def test_version_settings_are_overridable(appliance_home: Path) -> None:
    write(appliance_home / "config.toml", "[agent]\nretry_with_summary = true\n")
    env = {"APPLIANCE_HOME": str(appliance_home)}
    settings = load_settings(environ=env, overrides={"model.version": "v1.7", "agent.max_turns": 50})
    assert (settings.model.version, settings.agent.max_turns, settings.agent.retry_with_summary) == ("1.7", 50, True)
    # An unnamed model on a server: no version, the built-in defaults.
    remote = load_settings(environ=env, profile="remote")
    assert (remote.model.version, remote.agent.max_turns) == ("", 600)
    served = load_settings(environ=env, profile="remote", overrides={"model.name": "MiroThinker-v1.5-30B"})
    assert served.agent.max_turns == 400


def test_an_unknown_version_is_a_clear_error(appliance_home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}, overrides={"model.version": "2.0"})
    assert "unknown [model] version '2.0'" in info.value.one_line() and "1.0, 1.5, 1.7" in info.value.one_line()
