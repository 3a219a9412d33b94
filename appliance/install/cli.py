"""`appliance doctor | install | bundle create|install | profiles`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from appliance.config import load_settings
from appliance.errors import ConfigError, ExitCode
from appliance.install import bundle as bundles
from appliance.install import doctor as doctor_checks
from appliance.install.hardware import GIB, Hardware, detect
from appliance.install.installer import InstallOptions, make_plan, run_install
from appliance.install.profiles import pick_profile
from appliance.paths import app_dirs

_HARDWARE_HELP = "Plan for the machine described in this JSON file (from `appliance doctor --hardware-json`)."


def _hardware(path: Path | None, disk_path: Path) -> Hardware:
    if path is not None:
        try:
            return Hardware.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not UTF-8, or not the right fields
            raise ConfigError(
                f"{path} is not a machine description ({exc})", "write one with `appliance doctor --hardware-json`"
            ) from exc
    return detect(disk_path=disk_path)


def _say(text: str) -> None:
    click.echo(text, err=True)


# ------------------------------------------------------------------ profiles


@click.command("profiles")
@click.option("--hardware", "hardware_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=_HARDWARE_HELP)  # fmt: skip
@click.pass_context
def profiles(ctx: click.Context, hardware_file: Path | None) -> None:
    """List the hardware profiles and how each fits this machine; * marks the one in use (as doctor and install)."""
    dirs = app_dirs()
    hardware = _hardware(hardware_file, dirs.data_dir)
    pick = pick_profile(dirs, hardware, os.environ, (ctx.obj or {}).get("profile"))
    click.echo(hardware.summary())
    click.echo(f"profile: {pick.spec.name} ({pick.chosen_by})")
    click.echo("")
    for fit in pick.fits:
        mark = "*" if fit.spec.name == pick.spec.name else " "
        state = "fits" if fit.usable else "no"
        model = f"{fit.spec.file or fit.spec.description}"
        size = f"{fit.spec.weights_bytes / GIB:5.1f} GiB" if fit.spec.local else "   server"
        click.echo(f"{mark} {fit.spec.name:<13} {fit.spec.device:<6} {size}  {state:<4} {fit.reason}")
        click.echo(f"    {model}")


# ------------------------------------------------------------------ doctor


@click.command("doctor")
@click.option("--profile", help="Check this profile instead of the configured one.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: hardware, plan, checks.")
@click.option("--hardware-json", is_flag=True, help="Print this machine's description as JSON and stop.")
@click.pass_context
def doctor(ctx: click.Context, profile: str | None, as_json: bool, hardware_json: bool) -> None:
    """Hardware, the chosen profile and its memory plan, and the health of every component."""
    options: dict[str, Any] = ctx.obj or {}
    dirs = app_dirs()
    hardware = detect(disk_path=dirs.data_dir)
    # The profile install would set up and a run would use once installed: the same rule as `profiles`.
    pick = pick_profile(dirs, hardware, os.environ, profile or options.get("profile"))
    settings = load_settings(profile=pick.spec.name)
    if hardware_json:
        click.echo(hardware.to_json())
        return
    plan, checks = doctor_checks.diagnose(settings, hardware)
    click.echo(doctor_checks.render(hardware, plan, checks, as_json=as_json))
    if any(c.status == "fail" for c in checks):
        ctx.exit(ExitCode.UNAVAILABLE)


# ------------------------------------------------------------------ install


@click.command("install")
@click.option("--profile", default="", help="auto (default on a first install) or a profile name.")
@click.option("--dry-run", is_flag=True, help="Show the plan and change nothing.")
@click.option("--searxng-src", default="", help="SearXNG source: a directory, a .tar.gz or its URL (default: pinned).")
@click.option("--wheels", "wheel_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Install Python packages only from these wheel directories (no index).")  # fmt: skip
@click.option("--no-model", is_flag=True, help="Skip the weights.")
@click.option("--repo", default="", help="The weights' hub repository, instead of the profile's (OWNER/NAME).")
@click.option("--file", "file_name", default="", help="The GGUF file in that repository, instead of the profile's.")
@click.option("--no-searxng", is_flag=True, help="Skip SearXNG.")
@click.option("--no-sandbox", is_flag=True, help="Skip the sandbox's Python environment.")
@click.option("--force", is_flag=True, help="Install a profile even if its memory plan does not fit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--hardware", "hardware_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=_HARDWARE_HELP)  # fmt: skip
@click.pass_context
def install(
    ctx: click.Context,
    profile: str,
    dry_run: bool,
    searxng_src: str,
    wheel_dirs: tuple[Path, ...],
    no_model: bool,
    repo: str,
    file_name: str,
    no_searxng: bool,
    no_sandbox: bool,
    force: bool,
    quiet: bool,
    hardware_file: Path | None,
) -> None:
    """Show the plan, download and verify the weights, install SearXNG and the sandbox's Python, write the config."""
    dirs = app_dirs()
    options = InstallOptions(
        profile=profile or (ctx.obj or {}).get("profile", ""),
        dry_run=dry_run,
        searxng_src=searxng_src,
        wheel_dirs=wheel_dirs,
        with_model=not no_model,
        repo=repo,
        file=file_name,
        with_searxng=not no_searxng,
        with_sandbox=not no_sandbox,
        force=force,
        progress=not quiet,
        hardware=_hardware(hardware_file, dirs.data_dir) if hardware_file else None,
        environ=dict(os.environ),
    )
    plan = make_plan(options)
    click.echo(plan.render())
    if dry_run:
        click.echo("dry run: nothing was changed")
        return
    result = run_install(plan, options, _say)
    for line in result.changed:
        click.echo(f"changed: {line}")
    for line in result.unchanged:
        click.echo(f"unchanged: {line}")
    click.echo("nothing to do: already installed" if not result.changed else "installed")
    click.echo("next: `appliance doctor` to check everything, `appliance` to start")


# ------------------------------------------------------------------ bundle


@click.group("bundle")
def bundle() -> None:
    """Create or install an air-gapped bundle."""


@bundle.command("create")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--profile", default="", help="Profile to bundle (default: the configured one, else auto).")
@click.option("--no-weights", is_flag=True, help="Leave the weights out.")
@click.option("--corpus", "corpora", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A corpus file or directory to carry along (repeatable).")  # fmt: skip
@click.option("--zim", "zims", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A Kiwix ZIM archive to carry along (repeatable).")  # fmt: skip
@click.option("--searxng-src", default="", help="SearXNG source (default: the installed copy, else pinned).")
@click.option("--find-links", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Extra wheel directories pip may take wheels from (e.g. a CUDA llama-cpp-python).")  # fmt: skip
@click.option("--extra", "extras", multiple=True, help="Package extras to include, e.g. gpu or zim.")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The appliance checkout to build its wheel from (default: this one).")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def bundle_create(
    ctx: click.Context,
    out: Path,
    profile: str,
    no_weights: bool,
    corpora: tuple[Path, ...],
    zims: tuple[Path, ...],
    searxng_src: str,
    find_links: tuple[Path, ...],
    extras: tuple[str, ...],
    source: Path | None,
    quiet: bool,
) -> None:
    """Pack wheels, weights, SearXNG, the sandbox's packages and optional corpora into OUT."""
    dirs = app_dirs()
    name = profile or (ctx.obj or {}).get("profile") or ""
    if not name:
        name = pick_profile(dirs, detect(disk_path=dirs.data_dir), os.environ).spec.name
    digest = bundles.create(
        bundles.CreateOptions(
            out=out,
            profile=name,
            source=source,
            searxng_src=searxng_src,
            with_weights=not no_weights,
            corpora=corpora,
            zims=zims,
            find_links=find_links,
            extras=extras,
            environ=dict(os.environ),
            progress=not quiet,
        ),
        dirs,
        _say,
    )
    click.echo(f"bundle: {out} (profile {name})")
    click.echo(f"manifest sha256: {digest}")
    click.echo(f"install it offline with: bash {out}/install.sh --bundle {out} --bundle-digest {digest}")


@bundle.command("install")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--digest", default="", help="The manifest sha256 printed by `bundle create`, checked first.")
@click.option("--verify-only", is_flag=True, help="Check every checksum and stop.")
def bundle_install(path: Path, digest: str, verify_only: bool) -> None:
    """Verify every checksum of the bundle, then install it with no network."""
    if verify_only:
        manifest = bundles.verify(path, expect_digest=digest)
        click.echo(f"bundle ok: {len(manifest.files)} files, manifest sha256 {manifest.digest}")
        return
    changed = bundles.install(path, app_dirs(), _say, expect_digest=digest, environ=dict(os.environ))
    for line in changed:
        click.echo(f"changed: {line}")
    click.echo("installed from the bundle" if changed else "nothing to do: already installed")
