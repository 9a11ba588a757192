"""The documentation site (`make docs`): it builds in strict mode, and strict mode stops on a broken
cross-reference or page link.

The real `mkdocs build --strict` runs on a copy of mkdocs.yml and docs/ (the API pages read the
sources of this checkout through a link to src/). Then a site that inherits every setting of
mkdocs.yml (plugins, validation, strict) but holds one API page, with a broken cross-reference and a
broken page link in it, must fail and name both (one page, so that the test stays short).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mkdocs_build(project: Path, site: Path, config: str = "mkdocs.yml") -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of `project` into `site`; its console output (stdout and stderr) in `.stdout`."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", config,
                           "--site-dir", str(site)],
                          cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def test_site_builds_strict_and_a_broken_reference_fails_it(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", project)
    shutil.copytree(ROOT / "docs", project / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "src").symlink_to(ROOT / "src", target_is_directory=True)

    built = mkdocs_build(project, tmp_path / "site")
    assert built.returncode == 0, built.stdout[-4000:]
    assert "WARNING" not in built.stdout, built.stdout[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for command in ("fit", "validate", "test", "compare", "sweep", "figure", "evaluate", "data", "bench", "demo"):
        assert f"$ isep {command} --help" in cli and f"usage: isep {command}" in cli, command
    agent = (tmp_path / "site" / "reference" / "agent" / "index.html").read_text()
    assert 'id="isep.agent.agent.ISEPAgent"' in agent and 'id="isep.agent.config.AgentConfig"' in agent
    assert 'id="isep.agent.agent.ISEPAgent.act"' in agent  # inherited from the policy mixin, shown on the agent

    # mkdocs.yml's settings, minus the CLI page's hook; one page (every file in docs_dir must be in the nav)
    (project / "broken.yml").write_text("INHERIT: mkdocs.yml\ndocs_dir: broken-docs\nhooks: []\nnav: [api.md]\n")
    (project / "broken-docs").mkdir()
    (project / "broken-docs" / "api.md").write_text(
        "# API\n\n::: isep.evaluation\n\n"
        "See [the agent][isep.agent.NoSuchThing] and [a guide](guides/no-such-page.md).\n")
    broken = mkdocs_build(project, tmp_path / "broken-site", "broken.yml")
    assert broken.returncode != 0, broken.stdout[-4000:]
    assert "Aborted with 2 warnings in strict mode" in broken.stdout, broken.stdout[-4000:]
    assert "Could not find cross-reference target 'isep.agent.NoSuchThing'" in broken.stdout
    assert "guides/no-such-page.md" in broken.stdout
