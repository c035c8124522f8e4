"""The interactive client (`qpc repl`): slash commands over the conversation engine, with prompt_toolkit."""

from quicnprotochat.client.repl.app import HELP, Repl, colors_wanted, run_repl

__all__ = ["HELP", "Repl", "colors_wanted", "run_repl"]
