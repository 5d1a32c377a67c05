"""Output paths that cannot be written are refused before any work, in one line, leaving nothing."""

import errno
import tempfile

import pytest

from advunlearn_fast.errors import UserError
from advunlearn_fast.outputs import check_output_path
from tests.helpers import assert_refused, run_cli

COMMANDS = {
    "train": ["train", "--model", "tiny", "--concept", "x", "--iterations", "1"],
    "generate": ["generate", "--model", "world", "--prompt", "a red circle", "--steps", "1"],
    "eval": ["eval", "--model", "world", "--prompts", "PROMPTS", "--steps", "1"],
    "attack": ["attack", "--model", "world", "--prompts", "PROMPTS", "--judge", "world:colour=red", "--method", "none",
               "--gen-steps", "1"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_out_below_a_file_is_refused_and_nothing_is_written(tmp_path, command):
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    (tmp_path / "a-file").write_text("notes")
    args = [str(tmp_path / "prompts.txt") if a == "PROMPTS" else a for a in COMMANDS[command]]
    before = sorted(tmp_path.rglob("*"))
    assert_refused(run_cli(*args, "--out", tmp_path / "a-file" / "run"), "a-file is a file, not a folder")
    assert_refused(run_cli(*args, "--out", ""), "--out is empty")
    assert sorted(tmp_path.rglob("*")) == before


def test_export_and_the_bank_folder_are_checked_too(tmp_path):
    (tmp_path / "a-file").write_text("notes")
    assert_refused(run_cli("train", "--model", "tiny", "--concept", "x", "--iterations", "1", "--bank", "--out",
                           tmp_path / "run", "--bank-dir", tmp_path / "a-file"), "--bank-dir")
    assert not (tmp_path / "run").exists()
    assert_refused(run_cli("export", "--model", "world", "--encoder", "world", "--format", "authors-pt", "--out",
                           tmp_path / "a-file" / "encoder.pt"), "a-file is a file, not a folder")


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match=f"--out {tmp_path}/new/run: cannot write in {tmp_path} \\(Read-only file system\\)"):
        check_output_path(tmp_path / "new" / "run", "--out")


def test_a_writable_path_leaves_no_trace(tmp_path):
    check_output_path(tmp_path / "new" / "run", "--out")
    check_output_path(tmp_path / "encoder.pt", "--out", folder=False)
    assert list(tmp_path.iterdir()) == []


def test_the_machine_refusing_mid_run_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    from advunlearn_fast.evaluation import generation

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "g" / "0000.png"))

    monkeypatch.setattr(generation, "generate_images", full_disk)
    result = run_cli("generate", "--model", "world", "--prompt", "a red circle", "--steps", "1", "--out", tmp_path / "g")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"advunlearn: error: {tmp_path / 'g' / '0000.png'}: No space left on device"
