"""The `anycast-agent` command line: run (as ExaBGP's process), check-config, render exabgp."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import yaml

from anycast_agent import __version__, logs
from anycast_agent.agent import Agent
from anycast_agent.client import CLIENT_COMMANDS, add_client_commands, run_client
from anycast_agent.config import ENV_PREFIX, AgentConfig, deprecations, load_config
from anycast_agent.control.server import ControlServer, load_token
from anycast_agent.errors import ConfigError
from anycast_agent.exabgp_conf import agent_command, render_exabgp
from anycast_agent.fleet.operator_args import add_fleet_command
from anycast_agent.speaker.channel import Channel
from anycast_agent.speaker.dry_run import DryRunSpeaker
from anycast_agent.speaker.stdio import open_stdin, write_stdout
from anycast_agent.state import LAST_GOOD

log = logging.getLogger("anycast_agent")

EXIT_CONFIG = 2
DEFAULT_STATE_DIR = Path("/var/lib/anycast-agent")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anycast-agent",
        description="Health checks beside ExaBGP that announce and withdraw anycast routes.",
    )
    p.add_argument("--version", action="version", version=f"anycast-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run as ExaBGP's API process (commands on stdout)")
    run.add_argument("--config", required=True, type=Path, help="the agent's YAML config")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="probe and decide, print the commands that would be sent, talk to no ExaBGP",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        help="where the last-good config lives when the config file itself cannot be read "
        "(default: $ANYCAST_AGENT_STATE_DIR, else the file's state_dir, "
        "else /var/lib/anycast-agent)",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    check = sub.add_parser("check-config", help="validate a config: exit 0, or 2 with every error")
    check.add_argument("config", type=Path)

    sup = sub.add_parser(
        "supervise",
        help="run ExaBGP under a watchdog (for containers and labs without systemd)",
        add_help=False,
    )
    sup.add_argument("args", nargs=argparse.REMAINDER, help="see `anycast-agent supervise --help`")

    add_client_commands(sub)
    add_fleet_command(sub)

    render = sub.add_parser("render", help="write configuration for other programs")
    render_sub = render.add_subparsers(dest="what", required=True)
    exa = render_sub.add_parser("exabgp", help="an exabgp.conf running this agent for CONFIG")
    exa.add_argument("--config", required=True, type=Path)
    exa.add_argument(
        "--agent",
        default="/usr/bin/env anycast-agent",
        help="how ExaBGP starts the agent (default: %(default)s)",
    )
    exa.add_argument(
        "--config-path",
        type=Path,
        help="the config path as the agent will see it (default: --config made absolute)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client(args)
    match args.command:
        case "check-config":
            return check_config(args.config)
        case "render":
            return render(args)
        # Imported by their own commands only: `run` (the long-lived one) never loads them.
        case "supervise":
            from anycast_agent import supervise  # noqa: PLC0415

            return supervise.main(args.args)
        case "fleet":
            from anycast_agent.fleet.operator_cli import run_fleet  # noqa: PLC0415

            return run_fleet(args)
        case "run":
            logs.setup(args.log_level)
            return run(args.config, dry_run=args.dry_run, state_dir=args.state_dir)
    raise AssertionError(args.command)  # pragma: no cover


def check_config(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{exc.source}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if config.control.token_file is not None:
        try:
            load_token(config.control.token_file)
        except ConfigError as exc:
            print(f"{path}: invalid configuration", file=sys.stderr)
            for problem in exc.problems:
                print(f"  control.token_file: {problem}", file=sys.stderr)
            return EXIT_CONFIG
    for warning in deprecations(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    targets = sum(len(s.targets) for s in config.services)
    print(
        f"{path}: ok (pop {config.pop}, {len(config.services)} services, {targets} targets, "
        f"{len(config.bgp.neighbors)} neighbors)"
    )
    return 0


def render(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    path = args.config_path or args.config.resolve()
    try:
        sys.stdout.write(render_exabgp(config, agent_command(path, args.agent)))
    except ValueError as exc:
        print(f"anycast-agent render exabgp: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _state_dir_hint(path: Path, explicit: Path | None) -> Path:
    """Where to look for the last-good config when `path` itself is unusable."""
    if explicit is not None:
        return explicit
    if env := os.environ.get(f"{ENV_PREFIX}STATE_DIR"):
        return Path(env)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("state_dir"), str):
            return Path(data["state_dir"])
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        pass
    return DEFAULT_STATE_DIR


def config_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _load_for_run(path: Path, state_dir: Path | None) -> tuple[AgentConfig, bytes | None, bool]:
    """The config to run, its bytes, and whether it is the last-good one; raises ConfigError."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s: %s", exc.source, problem)
        last_good = _state_dir_hint(path, state_dir) / LAST_GOOD
        if not last_good.exists():
            log.critical("invalid config and no last-good config at %s: exiting", last_good)
            raise
        try:
            config = load_config(last_good)
        except ConfigError as exc2:
            log.critical("the last-good config %s is invalid too: %s", last_good, exc2)
            raise exc from None
        log.critical(
            "config %s is invalid: running the last-good config %s instead (fix and reload)",
            path,
            last_good,
        )
        return config, None, True
    for warning in deprecations(config):
        log.warning("%s: %s", path, warning)
    return config, config_bytes(path), False


def run(path: Path, *, dry_run: bool = False, state_dir: Path | None = None) -> int:
    try:
        config, text, fallback = _load_for_run(path, state_dir)
    except ConfigError:
        return EXIT_CONFIG
    return asyncio.run(_run(config, path.resolve(), text, fallback, dry_run))


async def _run(
    config: AgentConfig, path: Path, text: bytes | None, fallback: bool, dry_run: bool
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if dry_run:
        speaker: DryRunSpeaker | Channel = DryRunSpeaker(lambda line: print(line, flush=True))
    else:
        speaker = Channel(await open_stdin(), write_stdout)
    agent = Agent(
        config, speaker, config_path=path, config_text=text, fallback=fallback, dry_run=dry_run
    )
    try:
        agent.control = ControlServer.from_config(
            agent, config.control, config.state_dir, ephemeral=dry_run
        )
    except ConfigError as exc:
        # check-config (ExecStartPre) refuses this; at run time the routes matter more.
        log.critical("control endpoint disabled: %s", exc)
    log.info(
        "anycast-agent %s starting: pop %s, %d services%s",
        __version__,
        config.pop,
        len(config.services),
        " (dry run: commands go to stdout, nothing to ExaBGP)" if dry_run else "",
    )
    return await agent.run(stop)


if __name__ == "__main__":
    sys.exit(main())
