"""The three console scripts' help and group options: examples, --device help, --threads."""

from __future__ import annotations

import numba
import pytest
import torch
from click.testing import CliRunner

from infer.cli import main as infer_main
from patchstore.cli import main as patchstore_main
from tests.builders import make_shards, write_checkpoint
from train.cli import main as train_main

GROUPS = {"patchstore": patchstore_main, "train": train_main, "infer": infer_main}
COMMANDS = [(name, command) for name, group in GROUPS.items() for command in group.commands]


@pytest.mark.parametrize("name, command", COMMANDS)
def test_every_command_help_shows_an_example(name, command):
    """`<cli> <command> --help` has an Example(s) paragraph and every --device option says what auto means."""
    res = CliRunner().invoke(GROUPS[name], [command, "--help"])
    assert res.exit_code == 0 and "Example" in res.output, res.output
    for p in GROUPS[name].commands[command].params:
        assert p.name != "device" or p.help, f"{name} {command} --device has no help text"


def test_merge_help_names_the_output_option():
    """merge --help says where the output goes with the option's real name."""
    assert "-o OUT" in CliRunner().invoke(patchstore_main, ["merge", "--help"]).output


def test_threads_option_of_all_three_commands(tmp_path):
    """`--threads 1` before any command sets numba's threads (and torch's in train and infer)."""
    shards = make_shards(tmp_path / "shards", volumes=1, per_volume=8)
    model = write_checkpoint(tmp_path / "m.pt")
    runs = [(patchstore_main, ["--threads", "1", "verify", str(shards)], False),
            (train_main, ["--threads", "1", "evaluate", str(model), str(shards), "--device", "cpu"], True),
            (infer_main, ["--threads", "1", "volume", "--help"], True)]
    before = numba.get_num_threads(), torch.get_num_threads()
    try:
        for cli, args, sets_torch in runs:
            numba.set_num_threads(before[0])
            torch.set_num_threads(before[1])
            res = CliRunner().invoke(cli, args)
            assert res.exit_code == 0, res.output
            assert numba.get_num_threads() == 1
            assert (torch.get_num_threads() == 1) == (sets_torch or before[1] == 1)
    finally:
        numba.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    assert CliRunner().invoke(infer_main, ["--threads", "0", "volume", "--help"]).exit_code == 2
