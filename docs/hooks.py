"""MkDocs hook: the command-line page shows each `isep` command's real `--help`, made at build time.

`docs/reference/cli.md` holds markers such as `<!-- isep-help: fit -->` or `<!-- isep-help: data check -->`
(`<!-- isep-help: -->` is `isep --help`). When the build starts (`on_config`), one child process of
this Python (the venv's, the one running mkdocs) imports `isep.cli` once and runs `main([... ,
"--help"])` for every marker, so the commands share one import of isep (and of Lightning, which
`isep fit --help` needs) and run while mkdocstrings reads the sources. When the page is rendered
(`on_page_markdown`), each marker becomes a code block with that text. A command whose help fails
(or a marker whose command does not exist) fails the build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

PAGE = "reference/cli.md"
MARKER = re.compile(r"^<!-- isep-help:(?P<args>[^>]*?)-->$", re.M)
TIMEOUT_S = 300
WIDTH = "100"  # argparse wraps to $COLUMNS; a fixed width keeps the page the same on every machine

# Runs in the child: `isep <args> --help` for each args, through the console script's own `main`.
CHILD = r"""
import contextlib, io, json, sys
from isep.cli import main

out = {}
for args in json.loads(sys.argv[1]):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            code = main(args.split() + ["--help"])
        except SystemExit as stop:  # argparse's help exits 0
            code = stop.code
    out[args] = [code or 0, text.getvalue()]
sys.stdout.write(json.dumps(out))
"""

_job: dict = {}


def _commands(docs_dir: str) -> list[str]:
    page = Path(docs_dir) / PAGE
    if not page.is_file():
        return []
    return list(dict.fromkeys(" ".join(m.group("args").split()) for m in MARKER.finditer(page.read_text())))


def on_config(config, **kwargs):
    _stop()
    commands = _commands(config["docs_dir"])
    if commands:
        env = dict(os.environ, COLUMNS=WIDTH, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
        _job["commands"] = commands
        _job["proc"] = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(commands)], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return config


def _helps() -> dict[str, tuple[int, str]]:
    if "helps" not in _job:
        proc = _job.get("proc")
        if proc is None:
            raise PluginError(f"isep-help: no help texts were started for {PAGE}")
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise PluginError(f"isep-help: `isep ... --help` took longer than {TIMEOUT_S} s") from None
        if proc.returncode != 0:
            raise PluginError(f"isep-help: the help process failed (exit {proc.returncode}):\n{err[-3000:]}")
        _job["helps"] = json.loads(out)
    return _job["helps"]


def _block(args: str, code: int, text: str) -> str:
    command = f"isep {args} --help".replace("  ", " ")
    if code != 0 or not text.strip():
        raise PluginError(f"isep-help: `{command}` exited {code} with {len(text)} characters of help")
    return f"```text\n$ {command}\n{text.rstrip()}\n```"


def on_page_markdown(markdown: str, page, config, files, **kwargs):
    if page.file.src_uri != PAGE:
        return markdown
    helps = _helps()

    def replace(match: re.Match) -> str:
        args = " ".join(match.group("args").split())
        if args not in helps:
            raise PluginError(f"isep-help: no help was made for {args!r}")
        return _block(args, *helps[args])

    return MARKER.sub(replace, markdown)


def _stop() -> None:
    proc = _job.get("proc")
    if proc is not None and proc.poll() is None:  # the build ended before the page used it
        proc.kill()
        proc.communicate()
    _job.clear()


def on_post_build(config, **kwargs):
    _stop()


def on_build_error(error, **kwargs):
    _stop()
