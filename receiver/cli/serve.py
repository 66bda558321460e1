"""``webhook-receiver serve``: the service under gunicorn."""

from __future__ import annotations

import argparse
import os
from typing import Any

from receiver import config as config_mod
from receiver.cli.base import Command, ExitCode, load_config


class Serve(Command):
    """Run the service under gunicorn (threaded workers, each with its background runtime)."""

    name = "serve"
    help = "run the service under gunicorn"
    description = "Run the service under gunicorn."

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bind", default=os.environ.get("RECEIVER_BIND", "0.0.0.0:8080"),
                            help="HOST:PORT to listen on (default: $RECEIVER_BIND or "
                                 "%(default)s)")
        parser.add_argument("--workers", type=int,
                            default=int(os.environ.get("WEB_CONCURRENCY", 2)),
                            help="gunicorn worker processes (default: $WEB_CONCURRENCY or "
                                 "%(default)s)")
        parser.add_argument("--threads", type=int,
                            default=int(os.environ.get("RECEIVER_THREADS", 4)),
                            help="request threads per worker (default: $RECEIVER_THREADS or "
                                 "%(default)s)")

    def run(self, args: argparse.Namespace) -> int:
        from gunicorn.app.base import BaseApplication

        from receiver import gunicorn_conf, ui
        from receiver.app import create_app

        cfg = load_config(args)
        ui.check(cfg, args.bind)  # auth none on a bind that is not loopback: exit 2
        # before forking: every worker inherits the values read, and a service that cannot
        # verify a delivery never starts (the other commands read no secret they do not use)
        config_mod.read_secrets(cfg)
        if cfg.state.backend == "sqlite":
            from receiver.state import open_store

            open_store(cfg.state).init()  # before forking, so workers never race on the schema

        options: dict[str, Any] = {**vars(gunicorn_conf), "bind": args.bind,
                                   "workers": args.workers, "threads": args.threads}

        class Server(BaseApplication):  # type: ignore[misc]
            receiver_config = cfg  # for gunicorn_conf.when_ready's service.started line

            def load_config(self) -> None:
                # the module's names that are gunicorn settings, as gunicorn's -c would read
                for key, value in options.items():
                    if key in self.cfg.settings and value is not None:
                        self.cfg.set(key, value)

            def load(self) -> Any:
                return create_app(cfg)

        Server().run()
        return ExitCode.SUCCESS
