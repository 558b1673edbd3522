"""``sdctl completion bash|zsh``: the shell completion script, generated from the command table."""

from __future__ import annotations

from sdctl.commands import Command, arg
from sdctl.ctl import Ctl


def completion(ctl: Ctl) -> int:
    from sdctl.cli import _parser
    from sdquorum_rpc.completion import completion_script

    ctl.out(completion_script(_parser(), ctl.args.shell).rstrip("\n"))
    return 0


COMMANDS = [
    Command(
        "completion",
        "print the shell completion script (bash or zsh)",
        (
            "source <(sdctl completion bash)",
            "sdctl completion bash > /etc/bash_completion.d/sdctl",
            "echo 'source <(sdctl completion zsh)' >> ~/.zshrc",
        ),
        (arg("shell", choices=["bash", "zsh"]),),
        run=completion,
    ),
]
