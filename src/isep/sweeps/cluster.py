"""Where a sweep's trials run: a Ray started here, or a running cluster joined with `--address`
(checked at once: an address where nothing answers is one line before anything is written)."""

from __future__ import annotations

import os
import socket

from isep.errors import ConfigError


def check_address(address: str) -> None:
    """Fail at once, with the fix, when a host:port cluster address cannot be reached."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({err}); start one (`ray start --head`) "
                          "or leave out --address to run a local Ray") from None


def on_this_machine(host: str) -> bool:
    """Whether `host` is an address of this machine (a socket can be bound to it)."""
    try:
        found = socket.getaddrinfo(host.strip("[]") or "127.0.0.1", None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, sockaddr in found:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def token_for_local_head(address: str) -> None:
    """Send this machine's Ray token to a head on this machine, as `--address auto` does. With Ray's
    token authentication (2.60 here), a head started by `ray start --head` where a token exists
    (~/.ray/auth_token, which a local `ray.init()` writes: an `isep sweep` without --address) admits
    only drivers that send it, and `ray.init` sends it to a host:port only with RAY_AUTH_MODE=token.
    A head elsewhere gets no token unasked (RAY_AUTH_MODE=token sends it)."""
    if "RAY_AUTH_MODE" in os.environ or address == "auto" or address.startswith("ray://"):
        return
    if not on_this_machine(address.rpartition(":")[0]):
        return
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # (only where a token exists)


def start_ray(args, env: dict[str, str]):
    import ray

    runtime_env = {"env_vars": env}
    try:
        if args.address:
            token_for_local_head(args.address)
            ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=True)
        else:
            ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, runtime_env=runtime_env, include_dashboard=False)
    except ConnectionError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        token = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
            "; a head with token authentication (`ray start` says so) also needs RAY_AUTH_MODE=token here, with its "
            "token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
        raise ConfigError(f"cannot join the Ray cluster at {args.address} ({first}); start one (`ray start --head`) "
                          f"or leave out --address to run a local Ray{token}") from None
    except ImportError as err:  # ray:// needs Ray's client
        raise ConfigError(f"--address {args.address} joins through Ray's client, which is not installed ({err.name or err}): "
                          "pip install 'ray[client]'") from None
    return ray
