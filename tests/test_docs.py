"""The documentation site builds in strict mode, and what its pages show is true.

Conventions for the fenced blocks of `docs/*.md`, written as an HTML comment on the line
just before a block (invisible on the site):

- a ```python block runs, in page order, in one namespace per page; no marker needed;
- `<!-- docs-test: skip, needs a GPU -->` (or `a network`, or `torchrun` for code that
  needs several processes) leaves a block out; no other reason is accepted;
- `<!-- docs-test: output -->` on a ```text block: the stdout of the python block before it,
  less the per-epoch lines of the progress bar (they hold timings);
- `<!-- docs-test: excerpt trainer/trainer.py -->` on a block: every line is a verbatim line
  of that file, so a page can quote the code without the quote going stale.

Every `trainer ...` command of a ```bash block, and of the comments of `configs/*.yaml`,
that names the repository's configs is parsed and its keys checked, overrides included;
a ```text block starting with `error:` right after a bash block is the error it must give.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainer.cli import build_parser, overrides_to_dotlist
from trainer.config import ConfigError, _check_top_level, _sections, _trainer_section, load_config

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
_BLOCK = re.compile(
    r"(?:^<!-- docs-test: (?P<marker>[^\n]*?) -->\n)?"
    r"^(?P<fence>```+)(?P<language>\w*)[^\n]*\n(?P<code>.*?)^(?P=fence)[ \t]*$",
    re.DOTALL | re.MULTILINE,
)


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    marker: str

    def __str__(self) -> str:
        return f"{self.page.name}, the {self.language} block at line {self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(
            page,
            text.count("\n", 0, match.start("fence")) + 1,
            match["language"],
            match["code"],
            match["marker"] or "",
        )
        for match in _BLOCK.finditer(text)
    ]


def runnable_pages() -> list[Path]:
    return [page for page in PAGES if any(b.language == "python" for b in blocks(page))]


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    api = (site / "api" / "index.html").read_text()
    for documented in ("training_step", "configure_optimizers", "restore_best_weights", "find_lr"):
        assert documented in api  # the reference was generated from the docstrings
    assert (site / "lessons" / "index.html").exists()


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda page: page.name)
def test_the_python_blocks_of_a_page_run_and_print_what_it_shows(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    printed = ""
    for block in blocks(page):
        if block.language == "python" and not block.marker:
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                try:
                    exec(compile(block.code, str(block), "exec"), namespace)
                except Exception as error:
                    raise AssertionError(f"{block} failed: {error!r}") from error
            printed = stdout.getvalue()
        elif block.marker == "output":
            expected = block.code.rstrip()
            assert _comparable(printed) == expected, f"{block} is not what runs"


_PROGRESS_LINE = re.compile(r"Epoch \d+/\S+: .* \(\d+\.\d+s\)")


def _comparable(text: str) -> str:
    lines = [line.rstrip() for line in text.rstrip().splitlines()]
    return "\n".join(line for line in lines if not _PROGRESS_LINE.fullmatch(line))


def test_blocks_are_left_out_only_for_a_gpu_or_a_network() -> None:
    for page in PAGES:
        for block in blocks(page):
            if block.marker.startswith("skip"):
                reason = r"skip, needs (a GPU|a network|torchrun)"
                assert re.fullmatch(reason, block.marker), str(block)
            else:
                assert block.marker in ("", "output") or block.marker.startswith("excerpt "), (
                    f"{block}: unknown marker {block.marker!r}"
                )


def test_quoted_code_is_verbatim() -> None:
    quotes = [
        block for page in PAGES for block in blocks(page) if block.marker.startswith("excerpt")
    ]
    assert quotes, "the training-loop page quotes trainer/trainer.py"
    for block in quotes:
        source = REPO / block.marker.removeprefix("excerpt ").strip()
        lines = {line.strip() for line in source.read_text().splitlines()}
        for line in filter(None, (line.strip() for line in block.code.splitlines())):
            assert line in lines, f"{block}: {line!r} is not a line of {source.name}"


def documented_commands() -> list[tuple[str, str, str]]:
    """(where, command, expected error or "") for every `trainer ...` command of the docs
    and the configs; a ```text block right after a bash block that starts with `error:` is
    the error its command must report."""
    found = []
    for page in PAGES:
        for block, after in itertools.pairwise([*blocks(page), None]):
            if block.language != "bash":
                continue
            error = ""
            if after is not None and after.language == "text" and after.code.startswith("error:"):
                error = after.code.strip()
            found += [(str(block), line, error) for line in _command_lines(block.code)]
    for config in sorted((REPO / "configs").glob("*.yaml")):
        comments = [line.lstrip("# ") for line in config.read_text().splitlines()]
        found += [(config.name, line, "") for line in _command_lines("\n".join(comments))]
    return found


def _command_lines(text: str) -> list[str]:
    """Commands that run a config of the repository; `-c my.yaml` illustrates one's own."""
    text = text.replace("\\\n", " ")
    commands = [
        line.split("#")[0].split("(")[0].strip()
        for line in text.splitlines()
        if re.match(r"\s*(\.venv/bin/)?trainer (fit|validate|test|predict|lr-find) ", line)
    ]
    return [command for command in commands if "configs/" in command]


@pytest.mark.parametrize(("where", "command", "error"), documented_commands())
def test_documented_commands_name_real_configs_and_valid_keys(
    where: str, command: str, error: str
) -> None:
    """Every key is checked against the signature it goes to; nothing is built or downloaded."""
    args, extras = build_parser().parse_known_args(shlex.split(command)[1:])
    missing = [path for path in args.config if not (REPO / path).is_file()]
    assert not missing, f"{where}: {command!r} names missing configs {missing}"
    try:
        config = load_config([REPO / path for path in args.config], overrides_to_dotlist(extras))
        _check_top_level(config)
        _sections(config, build=False)  # what build_job checks before it builds
        _trainer_section(config.get("trainer"), build=False)
    except ConfigError as raised:
        assert error, f"{where}: {command!r} fails: {raised}"
        assert f"error: {raised}".startswith(error.split("...")[0]), where
    else:
        assert not error, f"{where}: {command!r} should fail with {error!r}"
